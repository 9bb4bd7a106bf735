"""The summary of a Turing test's answers: the paper's Table 1 per condition, over all subjects
and per subject, as JSON, markdown and HTML.

The p-value is the paper's one-sided test: the probability of at least that many correct
answers if subjects were guessing (binomial, n answers, p = 0.5); small means subjects told the
kinds apart. It reproduces the paper's p = 0.148 for 517 of 1000. The two-sided value is in the
JSON too.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from distsim.turing.common import CONDITIONS, REAL, TITLES

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
P_VALUE_TEST = (
    "one-sided exact binomial test (the paper's): P(at least this many correct | each answer "
    "right with probability 0.5); small means subjects told the two kinds apart"
)
# The paper's Table 1, for the summary to quote next to ours.
PAPER = {
    "refined": "517 of 1000 correct (51.7 %), p = 0.148",
    "synthetic": "162 of 200 correct (81 %), p <= 1e-8",
}


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


def summary_html(summary: dict[str, Any], json_url: str = "/summary.json") -> str:
    """The summary as a page: the same tables as summary.md, styled by the page's CSS."""
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
        "</title><link rel=stylesheet href='/page.css'></head><body class=summary>"
        f"<h1>Visual Turing test: summary</h1>{body}<p class=note>p: {e(summary['p_value_test'])}. "
        f"<a href='{e(json_url)}'>summary.json</a> · <a href='/'>the test</a></p></body></html>"
    )
