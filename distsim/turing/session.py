"""The Turing test without HTTP: which images each subject sees, the answer log, resuming.

Conditions: "refined" (real vs refined) and "synthetic" (real vs synthetic, the paper's
reference), run one after the other in that order, each with its own examples. At least one is
needed.

Images: the same ``examples`` images of each set (chosen by the seed) are the labelled examples
for every subject. Each subject's test images are drawn from the rest by (seed, subject name),
``count`` of each kind in the refined condition and ``synthetic_count`` of each in the
synthetic one, shown in a random order; a subject never sees the same real image twice. When
both refined and synthetic sets are given they are assumed paired (refined image i is
R(synthetic image i), as ``distsim.refine`` writes them), so their examples and one subject's
test images are drawn from disjoint indices. Different subjects may see the same images.

Files in the session's directory (``--out``):
- ``session.json``: the settings that decide which images each subject sees, and a fingerprint
  of every shard set's manifest. A restart must use the same ones (paths may change).
- ``answers.jsonl``: one JSON object per answer, appended, flushed and fsynced before
  ``TuringSession.answer`` returns, so a closed tab or killed server loses nothing: subject,
  condition, trial (0-based within the condition), set and index (the image), truth, answer,
  correct, time (UTC), response_ms (from the image appearing to the answer, measured by the
  page). A subject who comes back (same name) continues at the next unanswered trial.
- ``.lock``: held (flock) while a session uses the directory, so that a second one refuses.
- ``summary.json`` and ``summary.md`` (``distsim.turing.stats``), rewritten at each answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

from distsim.turing.common import CONDITIONS, PROG, REAL, TITLES, TuringError
from distsim.turing.images import (
    DISPLAYS,
    ShardImages,
    depth_range,
    is_depth,
    png_bytes,
    to_display,
)
from distsim.turing.stats import summarize, write_summary
from shards.cliutil import one_line
from shards.format import Manifest

EXAMPLES = 20  # of each kind, as in the paper
LOG_NAME = "answers.jsonl"
SESSION_NAME = "session.json"
LOCK_NAME = ".lock"
SESSION_VERSION = 1
# Keys (KeyboardEvent.key) per answer: the first kind's button is on the left.
KEYS = {"first": ("ArrowLeft", "1"), "second": ("ArrowRight", "2")}
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")


def check_subject(name: str) -> str:
    """A valid subject name: 1-64 letters, digits, spaces and ``._@-``, led by a letter or digit."""
    name = name.strip()
    if not _SUBJECT.fullmatch(name):
        raise TuringError(
            f"subject name {name!r} must be 1-64 letters, digits, spaces or ._@- "
            "and start with a letter or digit"
        )
    return name


class TrialMismatch(ValueError):
    """An answer for a trial that is not the subject's next one (a stale tab, a double click)."""


def _subject_rng(seed: int, subject: str) -> np.random.Generator:
    # sha256, not hash(): the draw must be the same in every process and after a restart.
    digest = hashlib.sha256(subject.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


class Plan:
    """The examples (shared by all subjects) and each subject's trials, from sizes and a seed.

    ``sizes``: images per set ("real" and the conditions' sets); ``counts``: test images of each
    kind per subject, per condition. Test images are never examples.
    """

    def __init__(
        self, sizes: dict[str, int], counts: dict[str, int], examples: int, seed: int
    ) -> None:
        self.conditions = tuple(c for c in CONDITIONS if c in counts)
        if not self.conditions:
            raise TuringError("no condition: give --refined or --synthetic (or both)")
        self.counts, self.examples_per_kind, self.seed = counts, examples, seed
        rng = np.random.default_rng(seed)
        perm = rng.permutation(sizes[REAL])
        need = examples + sum(counts.values())
        if len(perm) < need:
            raise TuringError(
                f"real set has {len(perm)} images; {examples} examples and "
                f"{' + '.join(str(n) for n in counts.values())} test images per subject need {need}"
            )
        self.examples: dict[str, np.ndarray] = {REAL: perm[:examples]}
        self.pools: dict[str, np.ndarray] = {REAL: perm[examples:]}
        # Refined and synthetic sets are paired by index (refined i = R(synthetic i)): one
        # permutation of the indices both have, cut into disjoint examples, so no subject sees
        # a refined eye next to its own synthetic original.
        others = self.conditions
        n = min(sizes[c] for c in others)
        need = examples * len(others) + sum(counts[c] for c in others)
        if n < need:
            sets = " and ".join(f"{c} set has {sizes[c]}" for c in others)
            why = " (they are paired by index, so they share that many)" if len(others) > 1 else ""
            raise TuringError(
                f"{sets} images{why}; {examples} examples each and "
                f"{' + '.join(str(counts[c]) for c in others)} test images per subject need {need}"
            )
        perm = rng.permutation(n)
        for k, c in enumerate(others):
            self.examples[c] = perm[k * examples : (k + 1) * examples]
        self.pools["paired"] = perm[len(others) * examples :]
        self._trials: dict[str, dict[str, list[tuple[str, int]]]] = {}

    def trials(self, subject: str) -> dict[str, list[tuple[str, int]]]:
        """{condition: [(set, image index), ...]} in the order shown: 2 * count per condition,
        ``count`` of each kind, the same for a name in every run."""
        if subject not in self._trials:
            rng = _subject_rng(self.seed, subject)
            total = sum(self.counts.values())
            real = rng.choice(self.pools[REAL], total, replace=False).tolist()
            other = rng.choice(self.pools["paired"], total, replace=False).tolist()
            out, at = {}, 0
            for c in self.conditions:
                n = self.counts[c]
                items = [(REAL, i) for i in real[at : at + n]] + [
                    (c, i) for i in other[at : at + n]
                ]
                out[c] = [items[j] for j in rng.permutation(len(items))]
                at += n
            self._trials[subject] = out
        return self._trials[subject]


_FIELDS = {
    "subject": str,
    "condition": str,
    "trial": int,
    "set": str,
    "index": int,
    "truth": str,
    "answer": str,
    "correct": bool,
    "time": str,
}


def _parse_record(line: str, where: str) -> dict[str, Any]:
    """One line of the log as an answer; TuringError naming ``where`` if it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TuringError(f"{where}: not JSON: {e}") from None
    if not isinstance(record, dict):
        raise TuringError(f"{where}: not a JSON object")
    for name, kind in _FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TuringError(f"{where}: field {name!r} should be {kind.__name__}, got {value!r}")
    condition = record["condition"]
    if condition not in CONDITIONS:
        raise TuringError(f"{where}: unknown condition {condition!r}")
    kinds = (REAL, condition)
    if record["truth"] not in kinds or record["answer"] not in kinds:
        raise TuringError(f"{where}: truth and answer must be one of {kinds}")
    if record["correct"] != (record["truth"] == record["answer"]):
        raise TuringError(f"{where}: 'correct' disagrees with truth and answer")
    return record


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every readable answer in an answer log, in order ([] when there is none yet)."""
    return [record for _, record in read_log_lines(path)]


def read_log_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, answer) for every readable answer in an answer log, in order.

    A last line without its newline is an answer whose write was cut short (the server never
    confirmed it): it is dropped, and cut from the file so later answers start on a line of
    their own. Any other bad line is skipped with a warning naming it, so that one damaged
    answer costs only itself.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TuringError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        _warn(f"{path}: dropping an unfinished last line")
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        raw = raw[:keep]
    records = []
    seen: dict[tuple[str, str, int], int] = {}  # (subject, condition, trial): its line
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = _parse_record(line, f"{path}:{n}")
        except TuringError as e:
            _warn(f"{one_line(e)}; skipping that line")
            continue
        key = (record["subject"], record["condition"], record["trial"])
        if key in seen:
            _warn(
                f"{path}:{n}: {key[0]}'s {key[1]} trial {key[2]} is on line {seen[key]} "
                "already; skipping that line"
            )
            continue
        seen[key] = n
        records.append((n, record))
    return records


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one answer as a JSON line and make it durable before returning."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, separators=(", ", ": ")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:  # the file's directory entry must survive a crash too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Trial:
    condition: str
    trial: int  # 0-based within the condition
    set: str
    index: int


class TuringSession:
    """The test without HTTP: the plan, the answer log in ``out_dir``, images as PNG bytes.

    Thread-safe: the server calls it from one thread per request.
    """

    def __init__(
        self,
        out_dir: str | Path,
        real: str | Path,
        refined: str | Path | None = None,
        synthetic: str | Path | None = None,
        *,
        count: int = 50,
        synthetic_count: int = 10,
        examples: int = EXAMPLES,
        seed: int = 0,
        scale: int | None = None,
        display: str = "auto",
        colormap: str = "viridis",
        default_subject: str | None = None,
    ) -> None:
        if min(count, synthetic_count, examples) < 1 or seed < 0:
            raise TuringError("counts and --examples must be >= 1 and --seed >= 0")
        if display not in DISPLAYS:
            raise TuringError(f"display must be one of {DISPLAYS}, got {display!r}")
        from matplotlib import colormaps

        if colormap not in colormaps:
            raise TuringError(f"unknown colour map {colormap!r} (matplotlib's names)")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TuringError(f"{self.out_dir}: --out exists and is not a directory")
        dirs = {REAL: real, "refined": refined, "synthetic": synthetic}
        self.sets = {k: _open(k, v) for k, v in dirs.items() if v is not None}
        self.default_subject = check_subject(default_subject) if default_subject else None
        self._check_images()
        counts = {"refined": count, "synthetic": synthetic_count}
        self.plan = Plan(
            {k: len(v) for k, v in self.sets.items()},
            {c: counts[c] for c in CONDITIONS if c in self.sets},
            examples,
            seed,
        )
        self.conditions = self.plan.conditions
        manifest = self.sets[REAL].manifest
        self.depth = is_depth(manifest) if display == "auto" else display == "depth"
        depths = {k: is_depth(s.manifest) for k, s in self.sets.items()}
        if display == "auto" and len(set(depths.values())) > 1:
            which = ", ".join(f"{k}: {'depth' if d else 'not depth'}" for k, d in depths.items())
            raise TuringError(
                f"the sets disagree on whether they hold depth ({which}); "
                "say which with --display depth or --display image"
            )
        channels, self.height, self.width = manifest.image_shape
        if channels not in ((1,) if self.depth else (1, 3)):
            raise TuringError(
                f"{self.sets[REAL].directory}: {channels}-channel images cannot be shown "
                f"{'as depth (1 channel)' if self.depth else '(only grey or RGB)'}"
            )
        # At most 330 x 240 px, so that the examples fit below on a laptop screen: 6x for the
        # paper's 35x55 eyes, 1x for its 224x224 hands.
        self.scale = scale or max(1, min(330 // self.width, 240 // self.height))
        self.colormap = colormap
        self.limits = (0.0, 1.0)
        if self.depth:
            shown = (self.sets[k].image(int(i)) for k, ix in self.plan.examples.items() for i in ix)
            self.limits = depth_range(shown)
        settings = {
            "version": SESSION_VERSION,
            "seed": seed,
            "examples": examples,
            "counts": {c: counts[c] for c in self.conditions},
            "sets": {k: s.fingerprint() for k, s in self.sets.items()},
        }
        self._lock = threading.RLock()
        self._png_cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.log_path = self.out_dir / LOG_NAME
        # subject -> condition -> trial -> record; a skipped log line leaves a gap to fill.
        self._answers: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
        self._out_lock = _lock_out_dir(self.out_dir)
        try:
            self._claim_out_dir(settings, {k: str(Path(v).resolve()) for k, v in dirs.items() if v})
            self._records = [
                record
                for n, record in read_log_lines(self.log_path)
                if self._replay(record, f"{self.log_path}:{n}")
            ]
            write_summary(self.out_dir, self._records)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let another session use ``out_dir``."""
        self._out_lock.close()  # closing the file releases its flock

    def __enter__(self) -> TuringSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_images(self) -> None:
        """Refuse sets whose images differ in shape or dtype from the real ones."""

        def text(m: Manifest) -> str:
            return "x".join(map(str, m.image_shape)) + " " + m.image_dtype

        real = self.sets[REAL]
        for name, s in self.sets.items():
            m = s.manifest
            if (m.image_shape, m.image_dtype) != (
                real.manifest.image_shape,
                real.manifest.image_dtype,
            ):
                raise TuringError(
                    f"{name} shards {s.directory} have {text(m)} images but real shards "
                    f"{real.directory} have {text(real.manifest)}: a subject would tell them "
                    "apart by that alone"
                )

    def _claim_out_dir(self, settings: dict[str, Any], paths: dict[str, str]) -> None:
        """Write session.json, or check that the one there has these settings."""
        path = self.out_dir / SESSION_NAME
        if path.exists():
            try:
                old = json.loads(path.read_text())
                old = {k: old[k] for k in settings}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise TuringError(
                    f"{path}: unreadable ({one_line(e)}); use another --out"
                ) from None
            if old != settings:
                diff = ", ".join(k for k in settings if old[k] != settings[k])
                raise TuringError(
                    f"{path}: this --out holds a session with other settings ({diff} differ); "
                    "give the same sets and flags to resume it, or another --out"
                )
        elif (self.out_dir / LOG_NAME).exists():
            raise TuringError(f"{self.out_dir} has {LOG_NAME} but no {SESSION_NAME}")
        else:
            text = json.dumps({**settings, "paths": paths}, indent=2) + "\n"
            tmp = self.out_dir / f".{SESSION_NAME}.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)

    def _replay(self, record: dict[str, Any], where: str) -> bool:
        """Take a logged answer into memory if it answers one of this plan's trials; else warn
        and leave it out (False). ``read_log_lines`` has left out repeated trials."""
        subject, condition, trial = record["subject"], record["condition"], record["trial"]
        if condition not in self.conditions:
            problem = f"condition {condition!r} is not in this session"
        else:
            trials = self.plan.trials(subject)[condition]
            done = self._answers.setdefault(subject, {}).setdefault(condition, {})
            if not 0 <= trial < len(trials):
                problem = f"{subject} has no {condition} trial {trial}"
            elif (record["set"], record["index"]) != trials[trial] or record["truth"] != record[
                "set"
            ]:
                problem = f"image differs from this session's plan for {subject}"
            else:
                done[trial] = record
                return True
        _warn(f"{where}: {problem}; skipping that line")
        return False

    # --- what the page asks -------------------------------------------------------------------

    def next_trial(self, subject: str) -> Trial | None:
        """The subject's first unanswered trial, or None when all are answered."""
        subject = check_subject(subject)
        with self._lock:
            trials = self.plan.trials(subject)
            for c in self.conditions:
                done = self._answers.get(subject, {}).get(c, {})
                for t, (s, i) in enumerate(trials[c]):
                    if t not in done:
                        return Trial(c, t, s, i)
        return None

    def state(self, subject: str) -> dict[str, Any]:
        """What the page shows next (never which set the test image is from)."""
        subject = check_subject(subject)
        with self._lock:  # one consistent view while an answer may be coming in
            trial = self.next_trial(subject)
            trials = self.plan.trials(subject)
            done = {c: len(a) for c, a in self._answers.get(subject, {}).items()}
        answered = sum(done.values())
        total = sum(len(t) for t in trials.values())
        out: dict[str, Any] = {
            "subject": subject,
            "done": trial is None,
            "answered": answered,
            "total": total,
            "parts": len(self.conditions),
            "image": {"width": self.width, "height": self.height, "scale": self.scale},
            "depth": self.depth,
            "condition": None,
            "trial": None,
        }
        if trial is not None:
            c = trial.condition
            q = _query(subject=subject, condition=c, trial=trial.trial)
            out["condition"] = {
                "name": c,
                "title": TITLES[c],
                "part": self.conditions.index(c) + 1,
                "kinds": [REAL, c],
                "answered": done.get(c, 0),
                "total": len(trials[c]),
                "examples": {k: self.example_urls(k) for k in (REAL, c)},
                "keys": {REAL: list(KEYS["first"]), c: list(KEYS["second"])},
            }
            out["trial"] = {"index": trial.trial, "image": f"/trial.png?{q}"}
        return out

    def example_urls(self, set_name: str) -> list[str]:
        return [
            f"/example.png?{_query(set=set_name, i=i)}"
            for i in range(len(self.plan.examples[set_name]))
        ]

    def answer(
        self,
        subject: str,
        condition: str,
        trial: int,
        answer: str,
        response_ms: int | None = None,
    ) -> dict[str, Any]:
        """Record an answer to the subject's next trial; returns the logged record.

        TrialMismatch when (condition, trial) is not the next trial (already answered, e.g. from
        another tab): nothing is written. TuringError for a bad subject or answer.
        """
        subject = check_subject(subject)
        # type(), not isinstance(): True is an int to Python and equals trial 1.
        if type(trial) is not int:
            raise TuringError(f"trial must be an integer, got {trial!r}")
        if response_ms is not None and (type(response_ms) is not int or response_ms < 0):
            raise TuringError(f"response_ms must be a non-negative integer, got {response_ms!r}")
        with self._lock:
            nxt = self.next_trial(subject)
            if nxt is None or (nxt.condition, nxt.trial) != (condition, trial):
                now = "all answered" if nxt is None else f"next is {nxt.condition} {nxt.trial}"
                raise TrialMismatch(f"{subject}: {condition} trial {trial} is not next ({now})")
            if answer not in (REAL, condition):
                raise TuringError(f"answer must be {REAL!r} or {condition!r}, got {answer!r}")
            record = {
                "subject": subject,
                "condition": condition,
                "trial": trial,
                "set": nxt.set,
                "index": nxt.index,
                "truth": nxt.set,
                "answer": answer,
                "correct": answer == nxt.set,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "response_ms": response_ms,
            }
            append_record(self.log_path, record)
            self._records.append(record)
            self._answers.setdefault(subject, {}).setdefault(condition, {})[trial] = record
            write_summary(self.out_dir, self._records)
        return record

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return summarize(self._records)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    # --- images -------------------------------------------------------------------------------

    def _png(self, set_name: str, index: int) -> bytes:
        key = (set_name, index)
        with self._lock:
            cached = self._png_cache.get(key)
        if cached is None:
            image = self.sets[set_name].image(index)
            cached = png_bytes(to_display(image, self.depth, self.limits, self.colormap))
            with self._lock:
                self._png_cache[key] = cached
                if len(self._png_cache) > 4096:
                    self._png_cache.popitem(last=False)
        return cached

    def example_png(self, set_name: str, i: int) -> bytes:
        """The i-th example of a set ("real" or a condition's set)."""
        if set_name not in self.sets or not 0 <= i < len(self.plan.examples[set_name]):
            raise KeyError(f"no example {set_name!r} {i}")
        return self._png(set_name, int(self.plan.examples[set_name][i]))

    def trial_png(self, subject: str, condition: str, trial: int) -> bytes:
        subject = check_subject(subject)
        if condition not in self.conditions:
            raise KeyError(f"no condition {condition!r}")
        trials = self.plan.trials(subject)[condition]
        if not 0 <= trial < len(trials):
            raise KeyError(f"no trial {trial}")
        set_name, index = trials[trial]
        return self._png(set_name, index)


def _lock_out_dir(out_dir: Path) -> Any:
    """An exclusive lock on out_dir (held while the returned file is open): two servers
    appending to one answer log would each hand out the same trials."""
    import fcntl

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        f = open(out_dir / LOCK_NAME, "w")  # noqa: SIM115 (held for the session's life)
    except OSError as e:
        raise TuringError(f"{out_dir}: cannot use as --out: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise TuringError(
            f"{out_dir}: another distsim.turing is serving this --out; stop it first"
        ) from None
    return f


def _open(name: str, directory: str | Path) -> ShardImages:
    try:
        return ShardImages(directory)
    except (ValueError, OSError) as e:  # ShardError is a ValueError
        raise TuringError(f"--{name}: {one_line(e)}") from None


def _query(**params: Any) -> str:
    return urlencode(params)
