"""A report directory that resumes: OUT/report.json holds every row made so far, keyed by
seed, and the settings that made them; rows made under other settings are never reused.

Several processes may fill one OUT at once (one per core, one per seed): each merges its rows
into report.json under a lock, and the file is replaced whole, so a reader never sees half.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
from pathlib import Path
from typing import Any

from shards.cliutil import one_line

# What a report written before a setting existed ran with.
SETTING_BEFORE = {"no_4x": "False", "estimator_seeds": "1"}


def settings(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, str]:
    # report.json stores every argument as a string, so compare in that form.
    return {k: str(getattr(args, k)) for k in keys}


def finished_seeds(
    out: Path, args: argparse.Namespace, keys: tuple[str, ...]
) -> dict[int, dict[str, Any]]:
    """Per-seed results an earlier report into `out` finished, if made with the same settings
    (`keys`, the report's ROW_SETTINGS): {seed: {"seed": s, "domains": {domain: {"rows": ...,
    ...}}}}."""
    path = out / "report.json"
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
        entries = earlier["seeds"]
        # Reports before resume existed did not store each entry's seed; their order is --seeds.
        order = ast.literal_eval(earlier["args"]["seeds"])
        before = {k: earlier["args"].get(k, SETTING_BEFORE.get(k)) for k in keys}
        if None in before.values():
            raise KeyError(next(k for k, v in before.items() if v is None))
    except (ValueError, KeyError, TypeError, SyntaxError) as err:
        raise ValueError(f"{path}: not a report this command wrote ({one_line(err)})") from err
    now = settings(args, keys)
    changed = [k for k in keys if before[k] != now[k]]
    if changed:
        k = changed[0]
        flag = "--" + k.replace("_", "-")
        if k == "no_4x":
            raise ValueError(f"{path}: made {'without' if before[k] == 'True' else 'with'} the "
                             "4x rows; use another --out or the same settings")  # fmt: skip
        raise ValueError(
            f"{path}: made with {flag} {before[k]!r}, not {now[k]!r}; "
            "use another --out or the same settings"
        )
    done = {}
    # Entries name their seed; only reports before that need --seeds' order, which a later
    # call with fewer seeds than the file holds would cut short if zipped.
    for i, entry in enumerate(entries):
        seed = int(entry["seed"] if "seed" in entry else order[i])
        if "domains" not in entry:  # reports before several domains: the "real" domain only
            entry = {"domains": {"real": {k: v for k, v in entry.items() if k != "seed"}}}
        done[seed] = {"seed": seed, "domains": entry["domains"]}
    return done


def save_report(
    out: Path, args: argparse.Namespace, results: dict[int, dict[str, Any]],
    keys: tuple[str, ...],
) -> None:  # fmt: skip
    """Write OUT/report.json: `results` ({seed: entry}) merged with what the file holds.

    Processes may fill different seeds, domains or rows of one OUT at the same time (one per
    core on a shared machine), so the merge runs under a lock on OUT/.report.lock, and the
    file is replaced whole, so a reader never sees half of one. What another process added
    (seeds, domains, rows, a domain's other records) is taken into `results` in place, so the
    caller skips that work; nothing already in `results` is overwritten."""
    with open(out / ".report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = finished_seeds(out, args, keys)
        for seed, mine in results.items():
            for domain, theirs in merged.get(seed, {}).get("domains", {}).items():
                here = mine["domains"].setdefault(domain, theirs)
                for key, value in theirs.items():
                    kept = here.setdefault(key, value)
                    if isinstance(kept, dict) and isinstance(value, dict):
                        for name, record in value.items():
                            kept.setdefault(name, record)
            merged[seed] = mine
        results.update(merged)
        report = {"args": {k: str(v) for k, v in vars(args).items()},
                  "seeds": list(merged.values())}  # fmt: skip
        tmp = out / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out / "report.json")
