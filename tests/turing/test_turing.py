"""distsim.turing: the plan, the answer log and resuming, the summary's arithmetic, depth
display, one-line errors, the HTTP server, and the page driven in a real headless browser."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from distsim.turing.cli import main
from distsim.turing.common import TuringError
from distsim.turing.images import NEUTRAL, is_depth, to_display
from distsim.turing.server import TuringServer, is_loopback, make_server
from distsim.turing.session import (
    LOG_NAME,
    Plan,
    Trial,
    TrialMismatch,
    TuringSession,
    read_log,
)
from distsim.turing.stats import confusion, write_summary
from shards.sources.sim_eyes import convert_sim_eyes
from shards.writer import ShardSetWriter

REPO = Path(__file__).resolve().parents[2]
COUNT, SYNTHETIC_COUNT = 3, 2  # per kind and subject: 6 + 4 trials
FIELDS = {
    "subject", "condition", "trial", "set", "index", "truth", "answer", "correct", "time",
    "response_ms",
}  # fmt: skip
PAGE_FILES = ("page.html", "page.css", "page.js")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny real shard sets: 64 eyes each, of three simulator domains."""
    root = tmp_path_factory.mktemp("turing")
    out = {}
    domains = (("real", "real", 1), ("refined", "real-lit", 2), ("synthetic", "synthetic", 3))
    for name, domain, seed in domains:
        out[name] = root / name
        convert_sim_eyes(out[name], domain, 64, seed, block_size=16, progress=False)
    return out


def _session(sets: dict[str, Path], out: Path, **kwargs: Any) -> TuringSession:
    kwargs = {"count": COUNT, "synthetic_count": SYNTHETIC_COUNT, **kwargs}
    return TuringSession(out, sets["real"], sets["refined"], sets["synthetic"], **kwargs)


def _record(subject: str, condition: str, truth: str, answer: str) -> dict[str, Any]:
    return {"subject": subject, "condition": condition, "truth": truth, "answer": answer}


# --- the plan -----------------------------------------------------------------------------------


def test_plan_examples_never_tested_equal_kinds_and_fixed_by_name() -> None:
    sizes = {"real": 100, "refined": 90, "synthetic": 120}
    plan = Plan(sizes, {"refined": 10, "synthetic": 5}, examples=20, seed=4)
    again = Plan(sizes, {"refined": 10, "synthetic": 5}, examples=20, seed=4)
    assert plan.conditions == ("refined", "synthetic")
    for name in ("alice", "bob"):
        trials = plan.trials(name)
        assert trials == again.trials(name)  # a restart shows a subject the same images
        for c, n in (("refined", 10), ("synthetic", 5)):
            kinds = [s for s, _ in trials[c]]
            assert len(kinds) == 2 * n and kinds.count("real") == n and kinds.count(c) == n
            for s, i in trials[c]:
                assert i not in plan.examples[s]
        real = [i for c in trials for s, i in trials[c] if s == "real"]
        assert len(set(real)) == len(real)  # no real image twice for one subject
        # Refined i is R(synthetic i): paired sets never show the same index to one subject.
        paired = [i for c in trials for s, i in trials[c] if s != "real"]
        paired += [*plan.examples["refined"], *plan.examples["synthetic"]]
        assert len(set(paired)) == len(paired) and max(paired) < 90
    assert plan.trials("alice") != plan.trials("bob")
    assert Plan(sizes, {"refined": 10}, 20, seed=5).examples["real"].tolist() != (
        plan.examples["real"].tolist()
    )
    with pytest.raises(TuringError, match="real set has 30 images.*need 35"):
        Plan({"real": 30, "refined": 100}, {"refined": 15}, 20, 0)
    with pytest.raises(TuringError, match="paired by index.*need 55"):
        Plan({"real": 100, "refined": 100, "synthetic": 54}, {"refined": 10, "synthetic": 5}, 20, 0)


# --- the summary's arithmetic -------------------------------------------------------------------


def test_summary_reproduces_the_papers_table_1() -> None:
    # Table 1: true real 224 as real, 276 as refined; true refined 207 as real, 293 as refined.
    cells = {("real", "real"): 224, ("real", "refined"): 276}
    cells |= {("refined", "real"): 207, ("refined", "refined"): 293}
    records = [_record("s", "refined", t, a) for (t, a), n in cells.items() for _ in range(n)]
    table = confusion(records, "refined")
    assert table["matrix"] == [[224, 276], [207, 293]]
    assert (table["trials"], table["correct"], table["accuracy"]) == (1000, 517, 0.517)
    assert round(table["p_value"], 3) == 0.148  # the paper's p: one-sided
    assert table["p_value_two_sided"] == pytest.approx(2 * table["p_value"], rel=1e-9)
    # The reference condition: 162 of 200 right, p <= 1e-8.
    syn = [_record("s", "synthetic", "real", "real")] * 81 + [
        _record("s", "synthetic", "synthetic", "synthetic")
    ] * 81
    syn += [_record("s", "synthetic", "real", "synthetic")] * 19
    syn += [_record("s", "synthetic", "synthetic", "real")] * 19
    assert confusion(syn, "synthetic")["p_value"] <= 1e-8


def test_summary_per_subject_and_pooled_by_hand(tmp_path: Path) -> None:
    answers = [  # subject, condition, truth, answer
        ("ann", "refined", "real", "real"),
        ("ann", "refined", "real", "refined"),
        ("ann", "refined", "refined", "refined"),
        ("ann", "refined", "refined", "refined"),
        ("bo", "refined", "real", "real"),
        ("bo", "refined", "refined", "real"),
        ("bo", "synthetic", "real", "real"),
        ("bo", "synthetic", "synthetic", "synthetic"),
    ]
    records = [_record(*a) for a in answers]
    summary = write_summary(tmp_path, records)
    ref, syn = summary["conditions"]["refined"], summary["conditions"]["synthetic"]
    assert ref["all"]["matrix"] == [[2, 1], [1, 2]]
    assert (ref["all"]["correct"], ref["all"]["trials"]) == (4, 6)
    assert ref["all"]["accuracy"] == pytest.approx(4 / 6)
    # P(X >= 4), X ~ Binomial(6, 1/2) = (15 + 6 + 1) / 64.
    assert ref["all"]["p_value"] == pytest.approx(22 / 64)
    assert ref["all"]["p_value"] == pytest.approx(binomtest(4, 6, 0.5, "greater").pvalue)
    assert ref["all"]["p_value_two_sided"] == pytest.approx(binomtest(4, 6).pvalue)
    assert ref["subjects"]["ann"]["matrix"] == [[1, 1], [0, 2]]
    assert ref["subjects"]["ann"]["p_value"] == pytest.approx(5 / 16)  # P(X >= 3 of 4)
    assert ref["subjects"]["bo"]["matrix"] == [[1, 0], [1, 0]]
    assert ref["subjects"]["bo"]["p_value"] == pytest.approx(3 / 4)  # P(X >= 1 of 2)
    assert syn["all"]["matrix"] == [[1, 0], [0, 1]] and list(syn["subjects"]) == ["bo"]
    assert syn["columns"] == ["selected as real", "selected as synthetic"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    md = (tmp_path / "summary.md").read_text()
    assert "| true real | 2 | 1 |" in md and "| true refined | 1 | 2 |" in md
    assert "Accuracy 66.7 % (4 of 6), p = 0.344" in md
    assert "| ann | 1 / 1 | 0 / 2 | 75.0 % (3 of 4) | 0.312 |" in md
    assert "one-sided" in md


# --- the answer log and resuming ----------------------------------------------------------------


def _answer_all(session: TuringSession, subject: str, n: int, answer: str = "real") -> None:
    for _ in range(n):
        trial = session.next_trial(subject)
        assert trial is not None
        session.answer(subject, trial.condition, trial.trial, answer, response_ms=10)


def test_log_format_and_resume_after_restart(sets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    session = _session(sets, out)
    plan = session.plan.trials("ann")
    state = session.state("ann")
    assert (state["answered"], state["total"], state["trial"]["index"]) == (0, 10, 0)
    # The page is never told which set a test image is from.
    assert '"set"' not in json.dumps(state["trial"]) and "index=" not in state["trial"]["image"]
    record = session.answer("ann", "refined", 0, "refined", response_ms=1234)
    _answer_all(session, "ann", 3)
    _answer_all(session, "bo", 1)

    lines = (out / LOG_NAME).read_text().splitlines()
    assert len(lines) == 5
    first = json.loads(lines[0])
    assert first == record and set(first) == FIELDS
    truth = plan["refined"][0][0]
    assert first["subject"] == "ann" and first["condition"] == "refined" and first["trial"] == 0
    assert (first["set"], first["index"], first["truth"]) == (*plan["refined"][0], truth)
    assert first["answer"] == "refined" and first["correct"] == (truth == "refined")
    assert first["response_ms"] == 1234 and first["time"].endswith("+00:00")
    assert [json.loads(x)["trial"] for x in lines] == [0, 1, 2, 3, 0]

    # Stale or doubled answers are refused and write nothing.
    with pytest.raises(TrialMismatch, match="not next"):
        session.answer("ann", "refined", 2, "real")
    with pytest.raises(TuringError, match="answer must be"):
        session.answer("ann", "refined", 4, "synthetic")
    assert len((out / LOG_NAME).read_text().splitlines()) == 5

    # One server per DIR: two would hand out the same trials.
    with pytest.raises(TuringError, match="another distsim.turing is serving this --out"):
        _session(sets, out)
    session.close()
    # A new server on the same DIR continues where each subject stopped.
    again = _session(sets, out)
    assert again.records() == session.records()
    assert again.next_trial("ann") == Trial("refined", 4, *plan["refined"][4])
    assert again.state("bo")["answered"] == 1
    _answer_all(again, "ann", 2)  # the last refined trials, then on to the second condition
    nxt = again.next_trial("ann")
    assert nxt is not None and (nxt.condition, nxt.trial) == ("synthetic", 0)
    _answer_all(again, "ann", 4)
    assert again.next_trial("ann") is None and again.state("ann")["done"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conditions"]["refined"]["subjects"]["ann"]["trials"] == 6
    assert summary["conditions"]["synthetic"]["all"]["trials"] == 4
    again.close()


def test_unfinished_last_line_is_dropped(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with _session(sets, out) as session:
        _answer_all(session, "ann", 2)
    with open(out / LOG_NAME, "a") as f:
        f.write('{"subject": "ann", "condition": "ref')  # the write a crash cut short
    with _session(sets, out) as session:
        assert "dropping an unfinished last line" in capsys.readouterr().err
        assert session.next_trial("ann").trial == 2  # type: ignore[union-attr]
        _answer_all(session, "ann", 1)
    assert [json.loads(x)["trial"] for x in (out / LOG_NAME).read_text().splitlines()] == [0, 1, 2]


def test_a_bad_log_line_is_skipped_and_the_others_kept(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    log = out / LOG_NAME
    with _session(sets, out) as session:
        _answer_all(session, "ann", 4)
        _answer_all(session, "bo", 1)
    lines = log.read_text().splitlines()
    # A bool where the trial number goes, as a POST of {"trial": true} once wrote, and a line
    # that is not JSON at all.
    assert '"trial": 1,' in lines[1]
    lines[1] = lines[1].replace('"trial": 1,', '"trial": true,')
    lines.insert(3, "{not json")
    lines.append(lines[0])  # an answer to a trial answered already: the first one counts
    log.write_text("\n".join(lines) + "\n")
    capsys.readouterr()

    assert main(["--out", str(out), "--summary"]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith(f"distsim.turing: warning: {log}:2: field 'trial'")
    assert warnings[1].startswith(f"distsim.turing: warning: {log}:4: not JSON")
    assert warnings[2].startswith(f"distsim.turing: warning: {log}:7: ann's refined trial 0")
    assert "## real vs refined: 2 subject(s), 4 answers" in captured.out

    with _session(sets, out) as session:
        assert len(capsys.readouterr().err.splitlines()) == 3
        assert len(session.records()) == 4
        # ann's unreadable answer is asked again; her answers after it stay answered.
        assert session.state("ann")["answered"] == 3
        assert session.next_trial("ann").trial == 1  # type: ignore[union-attr]
        _answer_all(session, "ann", 1)
        assert session.next_trial("ann").trial == 4  # type: ignore[union-attr]
        assert session.state("bo")["answered"] == 1
    assert len(read_log(log)) == 5 and "warning" in capsys.readouterr().err


def test_out_dir_remembers_its_settings(sets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _session(sets, out) as session:
        _answer_all(session, "ann", 1)
    with pytest.raises(TuringError, match="other settings \\(seed differ"):
        _session(sets, out, seed=1)
    with pytest.raises(TuringError, match="other settings \\(sets differ"):
        _session({**sets, "refined": sets["synthetic"], "synthetic": sets["refined"]}, out)
    # The sets may move: a copy with the same manifest resumes the session.
    moved = tmp_path / "moved"
    shutil.copytree(sets["real"], moved)
    session = TuringSession(
        out, moved, sets["refined"], sets["synthetic"], count=COUNT, synthetic_count=2
    )
    assert session.next_trial("ann").trial == 1  # type: ignore[union-attr]


# --- depth images -------------------------------------------------------------------------------


def _depth_set(path: Path, dtype: str, source: dict[str, Any], count: int = 48) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(500, 1500, (count, 1, 12, 16)).astype(dtype)
    images[:, :, :3] = 0  # invalid rows, as a depth camera leaves them
    with ShardSetWriter(path, (1, 12, 16), dtype, {}, source, block_size=8) as writer:
        writer.add(images, {})
    return path


def test_depth_is_recognised_and_coloured(tmp_path: Path) -> None:
    real = _depth_set(tmp_path / "real", "uint16", {"name": "test"})
    refined = _depth_set(
        tmp_path / "refined", "uint16", {"name": "refined", "input_source": {"name": "test"}}
    )
    session = TuringSession(tmp_path / "out", real, refined, count=4)
    assert session.depth and 500 <= session.limits[0] < session.limits[1] <= 1500
    rgb = np.asarray(Image.open(io.BytesIO(session.example_png("refined", 0))))
    assert rgb.shape == (12, 16, 3)
    assert (rgb[:3] == NEUTRAL).all()  # invalid pixels in neutral grey
    assert not (rgb[3:] == NEUTRAL).all(axis=-1).any()  # the colour map never gives that grey
    # Deeper is another colour; equal depths the same colour in every set.
    x = np.array([[[0, 600, 600, 1400]]], np.uint16)
    shown = to_display(x, True, session.limits)
    assert (shown[0, 1] == shown[0, 2]).all() and (shown[0, 1] != shown[0, 3]).any()

    # A set that says it is not depth next to one that looks like depth: the user must choose.
    ir = _depth_set(tmp_path / "ir", "uint16", {"name": "test", "modality": "infrared"})
    with pytest.raises(TuringError, match="disagree on whether they hold depth.*--display"):
        TuringSession(tmp_path / "out2", real, ir, count=4)
    grey = TuringSession(tmp_path / "out3", real, ir, count=4, display="image")
    assert np.asarray(Image.open(io.BytesIO(grey.example_png("real", 0)))).shape == (12, 16)

    def manifest(dtype: str, channels: int, source: dict[str, Any]) -> Any:
        return type(
            "M", (), {"source": source, "image_shape": (channels, 8, 8), "image_dtype": dtype}
        )

    assert is_depth(manifest("float32", 1, {}))
    assert not is_depth(manifest("uint8", 1, {}))
    assert not is_depth(manifest("uint16", 3, {}))
    assert is_depth(manifest("uint8", 1, {"modality": "depth"}))
    assert is_depth(manifest("uint8", 1, {"input_source": {"modality": "depth"}}))
    assert not is_depth(manifest("uint16", 1, {"modality": "ir"}))


def test_grey_images_are_shown_as_stored(sets: dict[str, Path], tmp_path: Path) -> None:
    session = _session(sets, tmp_path / "out")
    assert not session.depth and session.scale == 6  # 330 x 210 px for 35x55 eyes
    index = int(session.plan.examples["real"][3])
    png = np.asarray(Image.open(io.BytesIO(session.example_png("real", 3))))
    assert png.dtype == np.uint8 and (png == session.sets["real"].image(index)[0]).all()


# --- one-line errors ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd")
    wide = root / "wide"
    with ShardSetWriter(wide, (1, 36, 60), "uint8", {}, {"name": "test"}) as writer:
        writer.add(np.zeros((64, 36, 60), np.uint8), {})
    incomplete = root / "incomplete"
    incomplete.mkdir()
    afile = root / "a-file"
    afile.write_text("not a directory\n")
    return {"wide": wide, "incomplete": incomplete, "file": afile}


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ["--refined", "missing", "does not exist"]),
        ("incomplete", ["--real", "no manifest.json"]),
        ("shapes", ["refined shards", "1x36x60 uint8", "1x35x55 uint8"]),
        ("too-few", ["refined set has 64", "synthetic set has 64", "need 80"]),
        ("out-is-file", ["a-file", "not a directory"]),
        ("no-condition", ["no condition", "--refined or --synthetic"]),
        ("no-real", ["--real is required"]),
        ("subject", ["subject name", "<x>"]),
        ("summary-nothing", ["no answers.jsonl"]),
    ],
)
def test_errors_are_one_line(
    sets: dict[str, Path],
    odd_sets: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    needles: list[str],
) -> None:
    args = {"--real": sets["real"], "--refined": sets["refined"], "--out": tmp_path / "out"}
    extra: list[str] = []
    if case == "missing":
        args["--refined"] = tmp_path / "missing"
    elif case == "incomplete":
        args["--real"] = odd_sets["incomplete"]
    elif case == "shapes":
        args["--refined"] = odd_sets["wide"]
    elif case == "too-few":
        extra = ["--synthetic", str(sets["synthetic"]), "--count", "30"]
    elif case == "out-is-file":
        args["--out"] = odd_sets["file"]
    elif case == "no-condition":
        del args["--refined"]
    elif case == "no-real":
        del args["--real"]
    elif case == "subject":
        extra = ["--subject", "<x>"]
    elif case == "summary-nothing":
        extra = ["--summary"]
    capsys.readouterr()
    argv = [x for k, v in args.items() for x in (k, str(v))] + extra
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(err) == 1 and err[0].startswith("distsim.turing: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err)
    assert captured.out == ""


def test_summary_flag_prints_and_writes(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with _session(sets, out) as session:
        _answer_all(session, "ann", 3, "refined")
    (out / "summary.md").unlink()
    capsys.readouterr()
    assert main(["--out", str(out), "--summary"]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "summary.md").read_text()
    assert "## real vs refined: 1 subject(s), 3 answers" in printed


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture
def server(sets: dict[str, Path], tmp_path: Path) -> Iterator[TuringServer]:
    srv = make_server(_session(sets, tmp_path / "out", default_subject="ann"))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    srv.session.close()
    thread.join()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def _post(url: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_endpoints(server: TuringServer) -> None:
    base = server.url
    status, kind, page = _get(base)
    assert status == 200 and kind.startswith("text/html")
    status, kind, css = _get(base + "page.css")
    assert status == 200 and kind.startswith("text/css") and b"image-rendering: pixelated" in css
    status, kind, js = _get(base + "page.js")
    assert status == 200 and kind.startswith("text/javascript")
    # Everything the page needs is served here: nothing is fetched from elsewhere.
    for text in (page, css, js):
        assert b"http://" not in text and b"https://" not in text and b"//cdn" not in text
    status, _, body = _get(base + "api/config")
    assert status == 200 and json.loads(body) == {"subject": "ann"}
    status, _, body = _get(base + "api/state?subject=ann")
    state = json.loads(body)
    assert status == 200 and state["trial"]["index"] == 0
    assert len(state["condition"]["examples"]["real"]) == 20
    status, kind, png = _get(base + state["trial"]["image"].lstrip("/"))
    assert status == 200 and kind == "image/png" and png.startswith(b"\x89PNG")
    status, kind, _ = _get(base + state["condition"]["examples"]["refined"][19].lstrip("/"))
    assert status == 200 and kind == "image/png"
    assert _get(base + "example.png?set=refined&i=20")[0] == 404
    assert _get(base + "trial.png?subject=ann&condition=refined&trial=6")[0] == 404
    assert _get(base + "api/state?subject=%3Cx%3E")[0] == 400
    assert _get(base + "nothing")[0] == 404

    answer = {"subject": "ann", "condition": "refined", "trial": 0, "answer": "real"}
    status, state = _post(base + "api/answer", {**answer, "response_ms": 900})
    assert status == 200 and state["answered"] == 1 and state["trial"]["index"] == 1
    status, body = _post(base + "api/answer", answer)  # a double click
    assert status == 409 and body["state"]["trial"]["index"] == 1
    status, body = _post(base + "api/answer", {**answer, "trial": 1, "answer": "maybe"})
    assert status == 400 and "answer must be" in body["error"]
    assert _post(base + "api/answer", [1, 2])[0] == 400
    assert _post(base + "api/nothing", answer)[0] == 404
    assert len(server.session.records()) == 1

    # The results stay with the operator while the test runs: a subject's second tab gets none.
    tokens = ("", "?token=", "?token=x", "?token=%C3%A9")
    for path in (f"{page}{token}" for page in ("summary", "summary.json") for token in tokens):
        status, _, body = _get(base + path)
        assert status == 403 and "token" in json.loads(body)["error"], (path, status)
    token = server.summary_token
    status, kind, body = _get(f"{base}summary.json?token={token}")
    assert status == 200 and json.loads(body) == server.session.summary()
    status, kind, body = _get(f"{base}summary?token={token}")
    assert status == 200 and b"real vs refined: 1 subject(s), 1 answers" in body
    assert f"/summary.json?token={token}".encode() in body


def _raw_get(server: TuringServer, path: str) -> int:
    """The status of a GET sent with ``path`` exactly as written (urllib would tidy it)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_answers_need_strict_json_types(server: TuringServer) -> None:
    url = server.url + "api/answer"
    answer = {"subject": "ann", "condition": "refined", "trial": 0, "answer": "real"}
    assert _post(url, answer)[0] == 200
    answer["trial"] = 1  # next: a bool true would equal it
    bad = [
        ("trial", True), ("trial", 1.0), ("trial", "1"), ("subject", 5), ("condition", None),
        ("answer", ["real"]), ("response_ms", True), ("response_ms", "9"), ("response_ms", -1),
    ]  # fmt: skip
    for name, value in bad:
        status, body = _post(url, {**answer, name: value})
        assert status == 400 and name in body["error"], (name, value, status, body)
    assert len(server.session.records()) == 1
    status, state = _post(url, {**answer, "response_ms": 700})
    assert status == 200 and state["answered"] == 2
    assert [r["trial"] for r in read_log(server.session.log_path)] == [0, 1]


def test_page_files_are_package_data_and_served_as_they_are(server: TuringServer) -> None:
    shipped = {name: (files("distsim.turing") / name) for name in PAGE_FILES}
    for name, resource in shipped.items():
        assert resource.is_file(), name
    page = shipped["page.html"].read_bytes()
    assert b'href="/page.css"' in page and b'src="/page.js"' in page
    for url, name, kind in (
        ("", "page.html", "text/html"),
        ("page.css", "page.css", "text/css"),
        ("page.js", "page.js", "text/javascript"),
    ):
        status, content_type, body = _get(server.url + url)
        assert status == 200 and content_type.startswith(kind), (url, status, content_type)
        assert body == shipped[name].read_bytes(), url
    # Only those three URLs name files: nothing else in the package or in --out is reachable.
    for path in (
        "/page.html", "/server.py", "/distsim/turing/server.py", "/../session.json",
        "/%2e%2e/session.json", "/page.css/../session.json", "//etc/passwd", "/answers.jsonl",
    ):  # fmt: skip
        assert _raw_get(server, path) == 404, path


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_cli_prints_the_url_and_serves(sets: dict[str, Path], tmp_path: Path, host: str) -> None:
    command = [
        sys.executable, "-m", "distsim.turing", "--real", str(sets["real"]),
        "--synthetic", str(sets["synthetic"]), "--out", str(tmp_path / "out"), "--port", "0",
        "--host", host,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "real vs synthetic" in lines[0], (lines, proc.stderr)
        url = lines[1].split("open ", 1)[1].split()[0]
        assert url.startswith(f"http://{host}:") and not url.endswith(":0/")
        status, _, body = _get(url + "api/state?subject=cli")
        assert status == 200 and json.loads(body)["condition"]["name"] == "synthetic"
        # The summary's address, with its token, is printed for the operator alone.
        summary = re.search(r"\S+/summary\?token=[\w-]+", lines[1])
        assert summary is not None, lines
        assert _get(summary[0])[0] == 200 and _get(url + "summary")[0] == 403
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    warnings = err.splitlines()
    if host == "127.0.0.1":
        assert warnings == []
    else:  # beyond loopback, anyone who reaches the machine can take the test: say so
        assert len(warnings) == 1 and warnings[0].startswith(
            "distsim.turing: warning: --host 0.0.0.0 "
        ), warnings


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True),
        ("LocalHost", True), ("0.0.0.0", False), ("", False), ("::", False),
        ("192.168.1.20", False), ("10.0.0.1", False), ("example.org", False),
    ],
)  # fmt: skip
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- the page in a real browser -----------------------------------------------------------------


def _browser() -> Any:
    if BROWSER is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    return sync_playwright, BROWSER


def test_page_in_a_headless_browser(server: TuringServer, tmp_path: Path) -> None:
    sync_playwright, executable = _browser()
    session, log = server.session, server.session.log_path
    given: list[str] = []

    def logged() -> list[dict[str, Any]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # No subject in the URL: the server's --subject default fills it in.
            page.goto(server.url)
            ready = "body[data-mode=ready]"
            page.wait_for_selector(ready)
            assert "subject=ann" in page.url
            assert page.inner_text("#progress") == "Trial 1 of 6"
            assert "Part 1 of 2: real vs refined" in page.inner_text("#part")
            assert page.locator("#examples-first img[data-kind=real]").count() == 20
            assert page.locator("#examples-second img[data-kind=refined]").count() == 20
            assert page.inner_text("#examples-second-title") == "20 refined examples"
            rendering = page.eval_on_selector("#trial", "e => getComputedStyle(e).imageRendering")
            assert rendering == "pixelated"
            size = page.eval_on_selector("#trial", "e => [e.naturalWidth, e.clientWidth]")
            assert size == [55, 330]
            keys = page.inner_text("#keys-hint")
            assert "\u2190" in keys and "\u2192" in keys and "1" in keys and "2" in keys

            # Buttons and every key, one answer each.
            for how in ("click-real", "key-ArrowRight", "key-1", "click-refined"):
                page.wait_for_selector(ready)
                n = len(logged())
                if how.startswith("click"):
                    slot = "first" if how == "click-real" else "second"
                    page.click(f"#answer-{slot}")
                    given.append("real" if slot == "first" else "refined")
                else:
                    key = how.removeprefix("key-")
                    page.keyboard.press(key)
                    given.append("real" if key in ("ArrowLeft", "1") else "refined")
                page.wait_for_function(f"document.getElementById('progress').textContent "
                                       f"!== 'Trial {n + 1} of 6'")  # fmt: skip
                assert len(logged()) == n + 1  # on disk by the time the page moves on

            # A closed tab or a reload resumes at the next unanswered trial.
            page.reload()
            page.wait_for_selector(ready)
            assert page.inner_text("#progress") == "Trial 5 of 6"
            page.keyboard.press("ArrowLeft")
            given.append("real")
            page.wait_for_function("document.getElementById('progress').textContent === "
                                   "'Trial 6 of 6'")  # fmt: skip
            page.wait_for_selector(ready)  # keys are ignored until the image has loaded
            page.keyboard.press("2")
            given.append("refined")

            # The second condition: real vs synthetic, with its own examples.
            page.wait_for_function("document.getElementById('part').textContent.includes('2 of 2')")
            page.wait_for_selector(ready)
            assert page.inner_text("#examples-second-title") == "20 synthetic examples"
            assert page.inner_text("#answer-second").startswith("Synthetic")
            for key in ("ArrowLeft", "ArrowRight", "1", "2"):
                page.wait_for_selector(ready)
                page.keyboard.press(key)
                given.append("real" if key in ("ArrowLeft", "1") else "synthetic")
            page.wait_for_selector("body[data-mode=done]")
            assert "10 of 10 answered" in page.inner_text("#progress")

            records = logged()
            assert [r["answer"] for r in records] == given
            assert [(r["condition"], r["trial"]) for r in records] == [
                *(("refined", i) for i in range(6)),
                *(("synthetic", i) for i in range(4)),
            ]
            assert all(r["response_ms"] >= 0 for r in records)

            # No way from the page to the results; the operator's token opens the summary.
            assert page.locator("a[href*=summary]").count() == 0
            page.goto(f"{server.url}summary?token={server.summary_token}")
            page.wait_for_selector("table.confusion")
            for condition in ("refined", "synthetic"):
                mine = [r for r in records if r["condition"] == condition]
                m = confusion(mine, condition)["matrix"]
                section = page.locator(f"section#{condition}")
                cells = section.locator("table.confusion td").all_inner_texts()
                assert cells == [str(v) for row in m for v in row]
                right = sum(r["correct"] for r in mine)
                assert f"({right} of {len(mine)})" in section.locator(".accuracy").inner_text()

            # Another subject starts from the form and has their own trials.
            page.goto(server.url + "?subject=")
            page.wait_for_selector("body[data-mode=start]")
            page.fill("#subject-name", "bo")
            page.press("#subject-name", "Enter")
            page.wait_for_selector(ready)
            assert "subject=bo" in page.url and page.inner_text("#progress") == "Trial 1 of 6"
            page.click("#answer-second")
            page.wait_for_function("document.getElementById('progress').textContent === "
                                   "'Trial 2 of 6'")  # fmt: skip
            assert logged()[-1]["subject"] == "bo"
            assert not errors, errors
        finally:
            browser.close()
    assert session.state("ann")["done"] and session.state("bo")["answered"] == 1
