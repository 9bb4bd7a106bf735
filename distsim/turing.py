"""The paper's visual Turing test (section 4.1, Table 1) as a local web page.

    python -m distsim.turing --real data/eval-real --refined data/eval-refined --out turing/
    python -m distsim.turing --real R --refined F --synthetic S --out turing/ --subject alice
    python -m distsim.turing --out turing/ --summary      # write and print the summary, no server

In the paper, 10 subjects each labelled 100 images (50 real, 50 refined) as real or refined,
with 20 labelled examples of each kind in view: 517 of 1000 answers were right (p = 0.148).
With unrefined synthetic images instead, 162 of 200 were (p <= 1e-8). This module serves that
test on 127.0.0.1 (Python's http.server; the page is plain HTML/CSS/JS with nothing fetched from
elsewhere) and records every answer.

The page: a subject types a name (or comes with ``?subject=NAME``, or the server's
``--subject``), then sees one test image at a time above the labelled examples of both kinds,
and answers with the buttons or keys (left arrow or 1: real; right arrow or 2: refined, or
synthetic). It gives no feedback. The summary is at /summary (and /summary.json).

Conditions: "refined" (real vs refined, with ``--refined``) and "synthetic" (real vs synthetic,
the paper's reference, with ``--synthetic``), run one after the other in that order, each with
its own example panel and summary. At least one is needed.

Images: the same ``--examples`` images of each set (chosen by ``--seed``) are the labelled
examples for every subject. Each subject's test images are drawn from the rest by (seed,
subject name), ``--count`` of each kind in the refined condition and ``--synthetic-count`` of
each in the synthetic one (defaults 50 and 10: the paper's 1000 and 200 answers from 10
subjects), shown in a random order; a subject never sees the same real image twice. When both
refined and synthetic sets are given they are assumed paired (refined image i is R(synthetic
image i), as ``distsim.refine`` writes them), so their examples and one subject's test images
are drawn from disjoint indices. Different subjects may see the same images.

Files in DIR (``--out``):
- ``session.json``: the settings that decide which images each subject sees, and a fingerprint
  of every shard set's manifest. A restart must use the same ones (paths may change).
- ``answers.jsonl``: one JSON object per answer, appended, flushed and fsynced before the page
  hears back, so a closed tab or killed server loses nothing: subject, condition, trial (0-based
  within the condition), set and index (the image), truth, answer, correct, time (UTC),
  response_ms (from the image appearing to the answer, measured by the page). A subject who
  comes back (same name) continues at the next unanswered trial.
- ``.lock``: held (flock) while a server uses DIR, so that a second one refuses to start.
- ``summary.json`` and ``summary.md``, rewritten at each answer: per condition, the paper's
  Table 1 confusion matrix (rows: true real / true refined; columns: selected as real / as
  refined), accuracy and a binomial p-value, over all subjects and per subject.

The p-value is the paper's one-sided test: the probability of at least that many correct
answers if subjects were guessing (binomial, n answers, p = 0.5); small means subjects told the
kinds apart. It reproduces the paper's p = 0.148 for 517 of 1000. The two-sided value is in
summary.json too.

Display: images are enlarged without smoothing (``--scale``; the page sets CSS
``image-rendering: pixelated``). uint8 images are shown as stored (grey or RGB). Depth images
are shown through a colour map with invalid pixels (0) in neutral grey, on one depth range for
the whole session (the 1st-99th percentile of the example images' valid pixels), so real and
refined images are coloured alike. A set is depth when its manifest's ``source`` (or, for a
refined set, its input's) says ``"modality": "depth"``, or, since no converter writes that yet,
when its images are single-channel uint16 or float32; ``--display`` overrides.

``TuringSession`` holds the test (plan, answer log, summary) and knows nothing of HTTP;
``make_server`` wraps it in an http.server.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import html
import io
import json
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
from PIL import Image

from distsim import data
from shards.cliutil import non_negative_int, one_line, positive_int
from shards.format import MANIFEST_NAME, BlockRef, Manifest, decode_block, read_block

PROG = "distsim.turing"
REAL = "real"
CONDITIONS = ("refined", "synthetic")  # the non-real set of each condition, in the order run
TITLES = {"refined": "real vs refined", "synthetic": "real vs synthetic"}
EXAMPLES = 20  # of each kind, as in the paper
LOG_NAME = "answers.jsonl"
SESSION_NAME = "session.json"
LOCK_NAME = ".lock"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
SESSION_VERSION = 1
DISPLAYS = ("auto", "image", "depth")
NEUTRAL = (128, 128, 128)  # invalid depth pixels: a grey that viridis-like maps never produce
# Keys (KeyboardEvent.key) per answer: the first kind's button is on the left.
KEYS = {"first": ("ArrowLeft", "1"), "second": ("ArrowRight", "2")}
P_VALUE_TEST = (
    "one-sided exact binomial test (the paper's): P(at least this many correct | each answer "
    "right with probability 0.5); small means subjects told the two kinds apart"
)
# The paper's Table 1, for the summary to quote next to ours.
PAPER = {
    "refined": "517 of 1000 correct (51.7 %), p = 0.148",
    "synthetic": "162 of 200 correct (81 %), p <= 1e-8",
}
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")


class TuringError(ValueError):
    """Bad input (shard sets, settings, DIR, answer log). The message is one line."""


class TrialMismatch(ValueError):
    """An answer for a trial that is not the subject's next one (a stale tab, a double click)."""


def check_subject(name: str) -> str:
    """A valid subject name: 1-64 letters, digits, spaces and ``._@-``, led by a letter or digit."""
    name = name.strip()
    if not _SUBJECT.fullmatch(name):
        raise TuringError(
            f"subject name {name!r} must be 1-64 letters, digits, spaces or ._@- "
            "and start with a letter or digit"
        )
    return name


# --- images -------------------------------------------------------------------------------------


def _depth_mark(source: dict[str, Any]) -> bool | None:
    """The manifest's own word on depth: True/False when it says, None when silent."""
    for _ in range(8):  # a refined set's input_source nests; a loop bound keeps odd data finite
        modality = source.get("modality")
        if isinstance(modality, str):
            return modality.lower() == "depth"
        inner = source.get("input_source")
        if not isinstance(inner, dict):
            return None
        source = inner
    return None


def is_depth(manifest: Manifest) -> bool:
    """Whether a set holds depth images (see the module docstring for the rule)."""
    marked = _depth_mark(manifest.source)
    if marked is not None:
        return marked
    return manifest.image_shape[0] == 1 and manifest.image_dtype in ("uint16", "float32")


class ShardImages:
    """Random access to single images of a shard set, reading only the blocks needed."""

    def __init__(self, directory: str | Path, cache_blocks: int = 8) -> None:
        self.directory = Path(directory)
        self.manifest = data.open_shards(directory)  # ShardError (one line) if missing etc.
        self.blocks: list[BlockRef]
        self.blocks, _ = data.index_shard_set(directory, self.manifest)
        self._starts = np.cumsum([0] + [b.count for b in self.blocks]).tolist()  # (blocks + 1,)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()  # the server reads from several threads

    def __len__(self) -> int:
        return self._starts[-1]

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` in manifest order: (C, H, W) in the stored dtype."""
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} is not in [0, {len(self)})")
        b = bisect.bisect_right(self._starts, index) - 1
        with self._lock:
            block = self._cache.get(b)
            if block is None:
                ref = self.blocks[b]
                path = self.directory / self.manifest.shards[ref.shard].name
                with open(path, "rb") as f:
                    block, _ = decode_block(read_block(f, ref, ("image.npy",)), self.manifest)
                self._cache[b] = block
                if len(self._cache) > self._cache_blocks:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(b)
        return block[index - self._starts[b]]

    def fingerprint(self) -> str:
        """sha256 of manifest.json: names the set's exact contents (it lists every shard's)."""
        return hashlib.sha256((self.directory / MANIFEST_NAME).read_bytes()).hexdigest()


def depth_range(images: Iterable[np.ndarray]) -> tuple[float, float]:
    """(lo, hi): the 1st and 99th percentile of the valid (non-zero, finite) pixels."""
    valid = [x[(x != 0) & np.isfinite(x)].astype(np.float64).ravel() for x in images]
    pixels = np.concatenate(valid) if valid else np.zeros(0)
    if pixels.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(pixels, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def to_display(
    image: np.ndarray,
    depth: bool,
    limits: tuple[float, float] = (0.0, 1.0),
    colormap: str = "viridis",
) -> np.ndarray:
    """One (C, H, W) image as uint8 for a PNG: (H, W) grey or (H, W, 3) RGB.

    Non-depth images: uint8 as stored, uint16 scaled by 1/257, float32 read as [-1, 1] (the
    trainer's range for float images). Depth: ``colormap`` over ``limits``, 0 in NEUTRAL.
    """
    c = image.shape[0]
    if depth:
        if c != 1:
            raise TuringError(f"depth images need 1 channel, these have {c}")
        from matplotlib import colormaps  # only depth sets pay for importing matplotlib

        x = image[0].astype(np.float64)  # (H, W)
        valid = (x != 0) & np.isfinite(x)
        lo, hi = limits
        t = np.clip((np.where(valid, x, lo) - lo) / (hi - lo), 0.0, 1.0)
        rgb = (colormaps[colormap](t)[..., :3] * 255).round().astype(np.uint8)  # (H, W, 3)
        rgb[~valid] = NEUTRAL
        return rgb
    if c not in (1, 3):
        raise TuringError(f"images with {c} channels cannot be shown: only 1 (grey) or 3 (RGB)")
    if image.dtype == np.uint8:
        out = image
    elif image.dtype == np.uint16:
        out = (image.astype(np.float64) / 257).round().astype(np.uint8)
    else:
        out = ((np.clip(image.astype(np.float64), -1, 1) + 1) * 127.5).round().astype(np.uint8)
    return out[0] if c == 1 else np.ascontiguousarray(out.transpose(1, 2, 0))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --- which images each subject sees -------------------------------------------------------------


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


# --- the answer log -----------------------------------------------------------------------------

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


def _check_record(record: Any, where: str) -> dict[str, Any]:
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
    """Every answer in an answer log, in order ([] when there is none yet).

    A last line without its newline is an answer whose write was cut short (the server never
    confirmed it): it is dropped, and cut from the file so later answers start on a line of
    their own. Any other bad line is an error naming it.
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
        print(f"{PROG}: warning: {path}: dropping an unfinished last line", file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        raw = raw[:keep]
    records = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TuringError(f"{path}:{n}: not JSON: {e}") from None
        records.append(_check_record(record, f"{path}:{n}"))
    return records


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


# --- the summary --------------------------------------------------------------------------------


def binomial_p_values(correct: int, trials: int) -> tuple[float, float]:
    """(one-sided p for accuracy > 0.5, two-sided p) of an exact binomial test at p = 0.5."""
    from scipy.stats import binomtest

    greater = binomtest(correct, trials, 0.5, alternative="greater").pvalue
    two_sided = binomtest(correct, trials, 0.5, alternative="two-sided").pvalue
    return float(greater), float(two_sided)


def confusion(records: Iterable[dict[str, Any]], condition: str) -> dict[str, Any]:
    """Table 1 for some answers of one condition: matrix[i][j] = answers with truth kinds[i]
    and answer kinds[j], kinds = (real, condition); accuracy and p-values (None when empty)."""
    kinds = (REAL, condition)
    matrix = [[0, 0], [0, 0]]
    for r in records:
        matrix[kinds.index(r["truth"])][kinds.index(r["answer"])] += 1
    trials = sum(map(sum, matrix))
    correct = matrix[0][0] + matrix[1][1]
    p, p2 = binomial_p_values(correct, trials) if trials else (None, None)
    return {
        "matrix": matrix,
        "trials": trials,
        "correct": correct,
        "accuracy": correct / trials if trials else None,
        "p_value": p,
        "p_value_two_sided": p2,
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per condition that has answers: the pooled Table 1 and one per subject (name order)."""
    out: dict[str, Any] = {"p_value_test": P_VALUE_TEST, "conditions": {}}
    for c in CONDITIONS:
        mine = [r for r in records if r["condition"] == c]
        if not mine:
            continue
        subjects = sorted({r["subject"] for r in mine})
        out["conditions"][c] = {
            "title": TITLES[c],
            "rows": [f"true {REAL}", f"true {c}"],
            "columns": [f"selected as {REAL}", f"selected as {c}"],
            "paper": PAPER[c],
            "all": confusion(mine, c),
            "subjects": {s: confusion([r for r in mine if r["subject"] == s], c) for s in subjects},
        }
    return out


def _p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _accuracy_text(stats: dict[str, Any]) -> str:
    if not stats["trials"]:
        return "-"
    return f"{100 * stats['accuracy']:.1f} % ({stats['correct']} of {stats['trials']})"


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Visual Turing test", ""]
    if not summary["conditions"]:
        lines.append("No answers yet.")
    for c, s in summary["conditions"].items():
        a = s["all"]
        lines += [
            f"## {s['title']}: {len(s['subjects'])} subject(s), {a['trials']} answers",
            "",
            f"| | {s['columns'][0]} | {s['columns'][1]} |",
            "|---|--:|--:|",
            f"| {s['rows'][0]} | {a['matrix'][0][0]} | {a['matrix'][0][1]} |",
            f"| {s['rows'][1]} | {a['matrix'][1][0]} | {a['matrix'][1][1]} |",
            "",
            f"Accuracy {_accuracy_text(a)}, p = {_p_text(a['p_value'])}. "
            f"Paper (Table 1): {s['paper']}.",
            "",
            f"| subject | true {REAL}: as {REAL} / as {c} | true {c}: as {REAL} / as {c} "
            "| accuracy | p |",
            "|---|--:|--:|--:|--:|",
        ]
        for name, t in s["subjects"].items():
            m = t["matrix"]
            lines.append(
                f"| {name} | {m[0][0]} / {m[0][1]} | {m[1][0]} / {m[1][1]} "
                f"| {_accuracy_text(t)} | {_p_text(t['p_value'])} |"
            )
        lines.append("")
    lines += ["", f"p: {summary['p_value_test']}.", ""]
    return "\n".join(lines)


def write_summary(out_dir: str | Path, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write summary.json and summary.md to ``out_dir`` (each replaced atomically)."""
    summary = summarize(records)
    out_dir = Path(out_dir)
    for name, text in (
        (SUMMARY_JSON, json.dumps(summary, indent=2) + "\n"),
        (SUMMARY_MD, summary_markdown(summary)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
    return summary


# --- the session --------------------------------------------------------------------------------


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
        self._answers: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._out_lock = _lock_out_dir(self.out_dir)
        try:
            self._claim_out_dir(settings, {k: str(Path(v).resolve()) for k, v in dirs.items() if v})
            self._records = read_log(self.log_path)
            for n, record in enumerate(self._records, 1):
                self._replay(record, f"{self.log_path}:{n}")
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

    def _replay(self, record: dict[str, Any], where: str) -> None:
        """Take a logged answer into memory, checking it is the next trial of this plan."""
        subject, condition = record["subject"], record["condition"]
        if condition not in self.conditions:
            raise TuringError(f"{where}: condition {condition!r} is not in this session")
        done = self._answers.setdefault(subject, {}).setdefault(condition, [])
        trials = self.plan.trials(subject)[condition]
        if record["trial"] != len(done) or len(done) >= len(trials):
            raise TuringError(f"{where}: trial {record['trial']} is not {subject}'s next")
        want = trials[len(done)]
        if (record["set"], record["index"], record["truth"]) != (want[0], want[1], want[0]):
            raise TuringError(f"{where}: image differs from this session's plan for {subject}")
        done.append(record)

    # --- what the page asks -------------------------------------------------------------------

    def next_trial(self, subject: str) -> Trial | None:
        """The subject's first unanswered trial, or None when all are answered."""
        subject = check_subject(subject)
        with self._lock:
            trials = self.plan.trials(subject)
            for c in self.conditions:
                done = len(self._answers.get(subject, {}).get(c, []))
                if done < len(trials[c]):
                    s, i = trials[c][done]
                    return Trial(c, done, s, i)
        return None

    def state(self, subject: str) -> dict[str, Any]:
        """What the page shows next (never which set the test image is from)."""
        subject = check_subject(subject)
        with self._lock:  # one consistent view while an answer may be coming in
            trial = self.next_trial(subject)
            trials = self.plan.trials(subject)
            answered = sum(len(a) for a in self._answers.get(subject, {}).values())
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
                "answered": trial.trial,
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
        if response_ms is not None and (
            not isinstance(response_ms, int) or isinstance(response_ms, bool) or response_ms < 0
        ):
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
            self._answers.setdefault(subject, {}).setdefault(condition, []).append(record)
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


# --- HTTP ---------------------------------------------------------------------------------------


def summary_html(summary: dict[str, Any]) -> str:
    """The summary as a page: the same tables as summary.md."""
    e = html.escape
    parts = []
    for s in summary["conditions"].values():
        a, cols, rows = s["all"], s["columns"], s["rows"]
        matrix = "".join(
            f"<tr><th>{e(rows[i])}</th><td>{a['matrix'][i][0]}</td><td>{a['matrix'][i][1]}</td></tr>"
            for i in range(2)
        )
        subjects = "".join(
            f"<tr><th>{e(name)}</th><td>{t['matrix'][0][0]} / {t['matrix'][0][1]}</td>"
            f"<td>{t['matrix'][1][0]} / {t['matrix'][1][1]}</td>"
            f"<td>{e(_accuracy_text(t))}</td><td>{_p_text(t['p_value'])}</td></tr>"
            for name, t in s["subjects"].items()
        )
        kind = e(rows[1].removeprefix("true "))
        parts.append(
            f"<section class=condition id='{e(rows[1].split()[-1])}'><h2>{e(s['title'])}: "
            f"{len(s['subjects'])} subject(s), {a['trials']} answers</h2>"
            f"<table class=confusion><tr><th></th><th>{e(cols[0])}</th><th>{e(cols[1])}</th></tr>"
            f"{matrix}</table>"
            f"<p class=result>Accuracy <b class=accuracy>{e(_accuracy_text(a))}</b>, "
            f"p = <b class=p>{_p_text(a['p_value'])}</b>. Paper (Table 1): {e(s['paper'])}.</p>"
            f"<table class=subjects><tr><th>subject</th><th>true real: as real / as {kind}</th>"
            f"<th>true {kind}: as real / as {kind}</th><th>accuracy</th><th>p</th></tr>"
            f"{subjects}</table></section>"
        )
    body = "".join(parts) or "<p>No answers yet.</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Turing test summary"
        f"</title><style>{_CSS}</style></head><body class=summary><h1>Visual Turing test: "
        f"summary</h1>{body}<p class=note>p: {e(summary['p_value_test'])}. "
        "<a href='/summary.json'>summary.json</a> · <a href='/'>the test</a></p></body></html>"
    )


def page_html(session: TuringSession) -> str:
    config = {"subject": session.default_subject, "keys": KEYS}
    # "<" escaped so that no subject name can close the script element.
    return _PAGE.replace("/*CONFIG*/null", json.dumps(config).replace("<", "\\u003c")).replace(
        "/*CSS*/", _CSS
    )


class _Handler(BaseHTTPRequestHandler):
    server: TuringServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per image request would bury the URL and any error

    def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except ConnectionError:  # the tab was closed or reloaded mid-reply: nothing to tell
            self.close_connection = True

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _error(self, status: int, message: str, **extra: Any) -> None:
        self._json(status, {"error": message, **extra})

    def do_GET(self) -> None:  # noqa: N802
        session = self.server.session
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/":
                self._send(200, page_html(session).encode(), "text/html; charset=utf-8")
            elif url.path == "/api/state":
                self._json(200, session.state(q.get("subject", "")))
            elif url.path == "/example.png":
                png = session.example_png(q.get("set", ""), int(q.get("i", "")))
                self._send(200, png, "image/png", "private, max-age=3600")
            elif url.path == "/trial.png":
                png = session.trial_png(
                    q.get("subject", ""), q.get("condition", ""), int(q.get("trial", ""))
                )
                self._send(200, png, "image/png", "private, max-age=3600")
            elif url.path == "/summary":
                self._send(
                    200, summary_html(session.summary()).encode(), "text/html; charset=utf-8"
                )
            elif url.path == "/summary.json":
                self._json(200, session.summary())
            elif url.path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            else:
                self._error(404, f"no page {url.path}")
        except (KeyError, IndexError) as e:
            self._error(404, f"no such image: {one_line(e)}")
        except ValueError as e:  # TuringError, and int() of a bad number
            self._error(400, one_line(e))
        except Exception as e:  # a bug: answer the page, then let socketserver print it
            self._error(500, one_line(e))
            raise

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        session = self.server.session
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= 65536:
            self.close_connection = True  # an unread body would be read as the next request
            self._error(400, "the answer must be a JSON body of at most 64 KiB")
            return
        raw = self.rfile.read(length)
        if urlsplit(self.path).path != "/api/answer":
            self._error(404, f"no page {self.path}")
            return
        subject = None
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise TuringError("the answer must be a JSON object")
            subject = body.get("subject")
            if not isinstance(subject, str) or not isinstance(body.get("trial"), int):
                raise TuringError("the answer needs a subject and a trial number")
            session.answer(
                subject,
                str(body.get("condition")),
                body["trial"],
                str(body.get("answer")),
                body.get("response_ms"),
            )
            self._json(200, session.state(subject))
        except TrialMismatch as e:
            # The page then shows the trial the log says is next (e.g. after a double click).
            assert subject is not None
            self._error(409, one_line(e), state=session.state(subject))
        except ValueError as e:  # TuringError, JSONDecodeError
            self._error(400, one_line(e))
        except OSError as e:  # the log could not be written: the answer is not saved
            self._error(500, f"answer not saved: {one_line(e)}")
        except Exception as e:
            self._error(500, f"answer not saved: {one_line(e)}")
            raise


class TuringServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: TuringSession, host: str, port: int) -> None:
        self.session = session
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(session: TuringSession, host: str = "127.0.0.1", port: int = 0) -> TuringServer:
    """An HTTP server for ``session`` (port 0: a free one; see ``.url``); call serve_forever."""
    return TuringServer(session, host, port)


_CSS = """
:root { --fg: #1d2125; --muted: #5f6b76; --line: #d5dbe0; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; padding: 12px 20px; font: 15px/1.4 system-ui, sans-serif; color: var(--fg);
  background: #f6f7f8; }
h1 { font-size: 19px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 0 0 6px; }
img.px { image-rendering: pixelated; display: block;
  background: #ccc; }
header { display: flex; gap: 18px; align-items: baseline; flex-wrap: wrap; }
header .meta { color: var(--muted); }
#test { display: flex; flex-direction: column; align-items: center; margin: 10px 0 14px;
  padding: 12px; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
#question { font-size: 17px; margin: 0 0 8px; }
#buttons { display: flex; gap: 16px; margin-top: 10px; }
#buttons button { font-size: 17px; padding: 8px 22px; min-width: 170px; border-radius: 6px;
  border: 1px solid #9aa5b1; background: #fff; cursor: pointer; }
#buttons button:hover:enabled { border-color: var(--accent); }
#buttons button:disabled { opacity: 0.5; cursor: default; }
kbd { font: 12px ui-monospace, monospace; border: 1px solid #9aa5b1; border-radius: 3px;
  padding: 0 4px; margin-left: 3px; background: #f1f3f5; }
#status { min-height: 1.4em; margin: 6px 0 0; color: #b42318; }
#examples { display: flex; gap: 20px; justify-content: center; flex-wrap: wrap; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.grid { display: grid; grid-template-columns: repeat(5, auto); gap: 4px; }
.hint { color: var(--muted); margin: 4px 0 0; font-size: 13px; }
#start, #done { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 20px; margin: 12px 0; max-width: 720px; }
#start input { font-size: 16px; padding: 6px; width: 260px; }
#start button { font-size: 16px; padding: 6px 16px; }
.hidden { display: none !important; }
table { border-collapse: collapse; margin: 6px 0 10px; background: #fff; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: right; }
th:first-child { text-align: left; }
body.summary section { margin: 10px 0 22px; }
.note { color: var(--muted); }
"""

_PAGE = """<!doctype html>
<html lang=en>
<head>
<meta charset=utf-8>
<title>Visual Turing test</title>
<style>/*CSS*/</style>
</head>
<body data-mode=loading>
<header>
  <h1>Visual Turing test</h1>
  <span class=meta id=who></span>
  <span class=meta id=part></span>
  <span class=meta id=progress></span>
</header>

<section id=start class=hidden>
  <h2>Real or not?</h2>
  <p>You will see images one at a time and say whether each is <b>real</b> or not (made by a
  simulator, possibly refined to look real). Half of them are real. Labelled examples of both
  kinds stay on screen the whole time. Answers are saved as you give them: you can close the
  page and come back with the same name to continue.</p>
  <form id=start-form>
    <label>Your name or code: <input id=subject-name autocomplete=off required></label>
    <button id=start-button type=submit>Start</button>
  </form>
  <p id=start-error class=hint></p>
</section>

<section id=done class=hidden>
  <h2>Done: all your answers are saved. Thank you!</h2>
  <p><a href="/summary">See the results so far</a> · <a href="/?subject=">start as someone
  else</a></p>
</section>

<main id=run class=hidden>
  <section id=test>
    <p id=question></p>
    <img id=trial class=px alt="test image">
    <div id=buttons>
      <button id=answer-first type=button></button>
      <button id=answer-second type=button></button>
    </div>
    <p class=hint id=keys-hint></p>
    <p id=status role=status></p>
  </section>
  <section id=examples>
    <div class=panel><h2 id=examples-first-title></h2><div class=grid id=examples-first></div></div>
    <div class=panel><h2 id=examples-second-title></h2><div class=grid id=examples-second></div>
    </div>
  </section>
</main>

<script>
"use strict";
const CONFIG = /*CONFIG*/null;
const $ = (id) => document.getElementById(id);
const KEYNAMES = {ArrowLeft: "\\u2190", ArrowRight: "\\u2192"};
let state = null;
let shownAt = 0;
let examplesFor = null;

function setMode(mode) { document.body.dataset.mode = mode; }
function show(id) {
  for (const s of ["start", "done", "run"]) $(s).classList.toggle("hidden", s !== id);
}
function cap(s) { return s.charAt(0).toUpperCase() + s.slice(1); }
function kbd(keys) { return keys.map((k) => "<kbd>" + (KEYNAMES[k] || k) + "</kbd>").join(""); }

function subjectFromUrl() {
  const params = new URLSearchParams(location.search);
  return params.has("subject") ? params.get("subject") : (CONFIG.subject || "");
}

async function api(path, options) {
  try {
    const r = await fetch(path, Object.assign({cache: "no-store"}, options || {}));
    const body = await r.json().catch(() => ({error: r.status + " " + r.statusText}));
    return {ok: r.ok, status: r.status, body: body};
  } catch (e) {
    return {ok: false, status: 0, body: {error: "the server does not answer (" + e + ")"}};
  }
}

function showStart(message) {
  state = null;
  show("start");
  $("who").textContent = $("part").textContent = $("progress").textContent = "";
  $("start-error").textContent = message || "";
  setMode("start");
  $("subject-name").focus();
}

async function load(subject) {
  setMode("busy");
  const r = await api("/api/state?subject=" + encodeURIComponent(subject));
  if (!r.ok) { showStart(r.body.error); return; }
  render(r.body);
}

function fillExamples(c, img) {
  // A third of the test image, at most 80 px tall so that 4 rows stay in view below it.
  const f = Math.min(img.scale / 3, 80 / img.height), w = img.width * f, h = img.height * f;
  ["first", "second"].forEach((slot, k) => {
    const kind = c.kinds[k];
    $("examples-" + slot + "-title").textContent =
      c.examples[kind].length + " " + kind + " examples";
    const grid = $("examples-" + slot);
    grid.replaceChildren(...c.examples[kind].map((src) => {
      const e = document.createElement("img");
      e.className = "px"; e.src = src; e.width = w; e.height = h; e.alt = kind + " example";
      e.dataset.kind = kind;
      return e;
    }));
  });
}

function render(s) {
  state = s;
  $("who").textContent = "Subject: " + s.subject;
  if (s.done) {
    show("done");
    $("part").textContent = "";
    $("progress").textContent = s.answered + " of " + s.total + " answered";
    setMode("done");
    return;
  }
  const c = s.condition, img = s.image;
  show("run");
  $("part").textContent = "Part " + c.part + " of " + s.parts + ": " + c.title;
  $("progress").textContent = "Trial " + (c.answered + 1) + " of " + c.total;
  $("question").innerHTML = "Is this image <b>" + c.kinds[0] + "</b> or <b>" + c.kinds[1] +
    "</b>?";
  ["first", "second"].forEach((slot, k) => {
    const kind = c.kinds[k], b = $("answer-" + slot);
    b.dataset.answer = kind;
    b.innerHTML = cap(kind) + " " + kbd(c.keys[kind]);
  });
  $("keys-hint").innerHTML = "Keys: " + kbd(c.keys[c.kinds[0]]) + " " + c.kinds[0] +
    ", " + kbd(c.keys[c.kinds[1]]) + " " + c.kinds[1] + ". No feedback is given.";
  if (examplesFor !== c.name) { fillExamples(c, img); examplesFor = c.name; }
  const t = $("trial");
  t.width = img.width * img.scale; t.height = img.height * img.scale;
  setButtons(false);
  setMode("busy");
  t.onload = () => {
    shownAt = performance.now();
    setButtons(true);
    $("status").textContent = "";
    setMode("ready");
  };
  t.onerror = () => { $("status").textContent = "The image did not load; reload the page."; };
  // The same image again (a 409 naming the trial on screen) fires no load event: go on.
  if (t.getAttribute("src") === s.trial.image && t.complete && t.naturalWidth) t.onload();
  else t.src = s.trial.image;
}

function setButtons(on) { $("answer-first").disabled = $("answer-second").disabled = !on; }

async function answer(kind) {
  if (document.body.dataset.mode !== "ready") return;  // one answer per image shown
  setMode("busy");
  // A clicked button keeps the focus, and Enter or Space would answer the next image with it.
  if (document.activeElement) document.activeElement.blur();
  setButtons(false);
  const body = {
    subject: state.subject, condition: state.condition.name, trial: state.trial.index,
    answer: kind, response_ms: Math.round(performance.now() - shownAt),
  };
  const r = await api("/api/answer", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (r.ok) render(r.body);
  else if (r.status === 409 && r.body.state) render(r.body.state);  // answered elsewhere
  else {
    $("status").textContent = "Not saved: " + r.body.error + ". Try again.";
    setButtons(true);
    setMode("ready");
  }
}

$("answer-first").addEventListener("click", (e) => answer(e.currentTarget.dataset.answer));
$("answer-second").addEventListener("click", (e) => answer(e.currentTarget.dataset.answer));
document.addEventListener("keydown", (e) => {
  if (!state || !state.condition || e.repeat || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.target instanceof HTMLInputElement) return;
  for (const kind of state.condition.kinds) {
    if (state.condition.keys[kind].includes(e.key)) { e.preventDefault(); answer(kind); }
  }
});
$("start-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("subject-name").value.trim();
  history.replaceState(null, "", "?subject=" + encodeURIComponent(name));
  load(name);
});

const first = subjectFromUrl();
if (first) {
  history.replaceState(null, "", "?subject=" + encodeURIComponent(first));
  load(first);
} else showStart("");
</script>
</body>
</html>
"""


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The paper's visual Turing test (Table 1) as a local web page: subjects "
        "label images as real or refined (and, with --synthetic, real or synthetic) with "
        f"{EXAMPLES} labelled examples of each kind in view. Every answer is appended to "
        f"DIR/{LOG_NAME} as it is given; summary.json and summary.md in DIR hold the confusion "
        "matrix, accuracy and a one-sided binomial p-value (the paper's test that accuracy > "
        "50%), over all subjects and per subject. Keys on the page: left arrow or 1 = real, "
        "right arrow or 2 = refined (synthetic).",
    )
    parser.add_argument("--real", type=Path, help="shard set of real images")
    parser.add_argument("--refined", type=Path, help="shard set of refined images")
    parser.add_argument(
        "--synthetic",
        type=Path,
        help="shard set of unrefined synthetic images: adds the paper's reference condition, "
        "real vs synthetic, run after real vs refined (assumed paired with --refined by index)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help=f"directory for {LOG_NAME} and the summaries"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    parser.add_argument(
        "--port", type=non_negative_int, default=0, help="port (0: a free one; the URL is printed)"
    )
    parser.add_argument(
        "--count",
        type=positive_int,
        default=50,
        help="test images of each kind per subject, real vs refined (50: the paper's 50 + 50)",
    )
    parser.add_argument(
        "--synthetic-count",
        type=positive_int,
        default=10,
        help="test images of each kind per subject, real vs synthetic (10: the paper's 200 "
        "answers from 10 subjects)",
    )
    parser.add_argument(
        "--examples",
        type=positive_int,
        default=EXAMPLES,
        help=f"labelled examples of each kind kept in view ({EXAMPLES}, as in the paper)",
    )
    parser.add_argument(
        "--subject",
        default=None,
        help="the page's default subject name (without it the page asks; ?subject=NAME in the "
        "URL picks one)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="chooses examples and test images (0)"
    )
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=None,
        help="test images' enlargement (default: the most that fits 330 x 240 px, 6x for "
        "35x55 eyes); "
        "examples are shown at a third of it, at most 80 px tall",
    )
    parser.add_argument(
        "--display",
        choices=DISPLAYS,
        default="auto",
        help="auto: depth images (marked so, or 1-channel uint16/float32) through a colour "
        "map, others as grey or RGB",
    )
    parser.add_argument(
        "--colormap", default="viridis", help="matplotlib colour map for depth (viridis)"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="write summary.json and summary.md from DIR's answers, print the markdown, exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.summary:
            if args.out.exists() and not args.out.is_dir():
                raise TuringError(f"{args.out}: --out exists and is not a directory")
            if not (args.out / LOG_NAME).is_file():
                raise TuringError(f"{args.out}: no {LOG_NAME} to summarise")
            summary = write_summary(args.out, read_log(args.out / LOG_NAME))
            print(summary_markdown(summary), end="")
            return 0
        if args.real is None:
            raise TuringError("--real is required (unless --summary)")
        session = TuringSession(
            args.out,
            args.real,
            args.refined,
            args.synthetic,
            count=args.count,
            synthetic_count=args.synthetic_count,
            examples=args.examples,
            seed=args.seed,
            scale=args.scale,
            display=args.display,
            colormap=args.colormap,
            default_subject=args.subject,
        )
        try:
            server = make_server(session, args.host, args.port)
        except OSError as e:
            session.close()
            raise TuringError(
                f"cannot serve on {args.host}:{args.port}: {e.strerror or e}"
            ) from None
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    parts = " then ".join(TITLES[c] for c in session.conditions)
    print(f"{PROG}: {parts}; answers go to {session.log_path}", flush=True)
    print(f"{PROG}: open {server.url} (Ctrl-C stops; the summary is at {server.url}summary)",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
