"""distsim.evaluate: a tiny estimator learns, the report and plot, errors, and 2 gloo ranks."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from distsim.data import BatchStream, make_epoch_loader
from distsim.estimation.pipeline import write_report
from distsim.estimation.plots import plot_cumulative
from distsim.evaluate import main
from distsim.gaze.task import GazeTask, train_and_test
from shards.cli import main as shards_main
from shards.format import read_manifest
from shards.writer import ShardSetWriter

TINY = {"batch_size": 32, "width_mult": 0.25, "num_workers": 0, "progress": False}
N_TEST = 512


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny convolutions gain nothing from intra-op threads, and on cores that other work keeps
    # busy two OpenMP threads made these tests 15x slower (spinning at barriers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    out = {}
    for name, domain, count, seed in (
        ("train", "synthetic", 2048, 0),
        ("test", "synthetic", N_TEST, 1),  # held out: another seed
        ("real", "real", 600, 2),
    ):
        out[name] = root / name
        args = ["--count", str(count), "--seed", str(seed), "--out", str(out[name])]
        assert shards_main(["convert", "sim-eyes", "--domain", domain, *args]) == 0
    # A shard set of eyes without gaze labels (e.g. an unlabelled real set).
    out["unlabelled"] = root / "unlabelled"
    with ShardSetWriter(out["unlabelled"], (35, 55), "uint8", {}, {"name": "test"}) as writer:
        writer.add(np.zeros((10, 35, 55), np.uint8), {})
    return out


def test_tiny_estimator_learns_and_writes_report(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    untrained = train_and_test(sets["train"], sets["test"], steps=0, **TINY)
    assert untrained["mean_angular_error_deg"] > 30  # ~40: a random net points anywhere

    torch.manual_seed(0)
    out = tmp_path / "run"
    flags = ["--batch-size", "32", "--width-mult", "0.25", "--num-workers", "0"]
    args = ["gaze", "--train", str(sets["train"]), "--test", str(sets["test"]), "--out", str(out)]
    assert main([*args, "--steps", "200", *flags, "--log-every", "50"]) == 0
    assert "mean error" in capsys.readouterr().out

    report = json.loads((out / "metrics.json").read_text())
    # ~6 degrees in practice; predicting the mean gaze of this set would be ~23.
    assert report["mean_angular_error_deg"] < 15
    assert report["thresholds_deg"] == list(range(1, 21))
    pct = report["within_pct"]
    assert len(pct) == 20 and all(0 <= p <= 100 for p in pct)
    assert all(b >= a for a, b in zip(pct, pct[1:], strict=False))
    assert pct[-1] > 90 and report["within_7deg_pct"] == pct[6]
    assert report["counts"]["test_images"] == N_TEST
    assert report["counts"]["train_images_drawn"] == 200 * 32
    assert report["config"]["optimizer"] == "adam" and report["config"]["steps"] == 200
    assert report["train_dir"] == str(sets["train"]) and report["test_dir"] == str(sets["test"])
    assert [e["step"] for e in report["train_loss"]] == [50, 100, 150, 200]
    assert report["train_loss"][-1]["loss"] < report["train_loss"][0]["loss"]
    assert report["seconds"]["total"] > 0

    png = out / "cumulative_error.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < png.stat().st_size < 500_000


def test_plot_command_overlays_evaluations(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, train in (("a", "train"), ("b", "real")):
        write_report(
            GazeTask(), train_and_test(sets[train], sets["test"], steps=0, **TINY), tmp_path / name
        )
    png = tmp_path / "both.png"
    args = ["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(png)]
    assert main([*args, "--names", "synthetic", "real"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in capsys.readouterr().out
    assert main([*args[:2], str(tmp_path / "missing"), "--out", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing/metrics.json: no such file" in err
    assert main([*args, "--names", "one"]) == 2
    assert "1 --names for 2" in capsys.readouterr().err


def test_plot_cumulative_overlays_runs(tmp_path: Path) -> None:
    curves = {
        "synthetic": [5.0 * d for d in range(1, 21)],
        "refined": [min(100.0, 8.0 * d) for d in range(1, 21)],
    }
    path = GazeTask().plot(curves, tmp_path / "sub" / "fig.png")
    assert path.is_file() and path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="thresholds"):
        plot_cumulative({"short": [1.0, 2.0]}, tmp_path / "bad.png", range(1, 21), "t",
                        xlabel="x", ylabel="y")  # fmt: skip


def test_epochs_train_count_and_real_note(
    sets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    report = train_and_test(sets["real"], sets["test"], epochs=0.1, train_count=300, **TINY)
    # Training on a real set is the paper's upper-bound row: allowed, with a note.
    assert "labels for evaluation only" in capsys.readouterr().err
    assert report["train_labels_for_evaluation_only"] is True
    assert report["config"]["steps"] == 1  # ceil(0.1 * 300 / 32)
    assert report["counts"]["train_images_used"] == 300
    assert report["counts"]["train_images_in_set"] == 600
    with pytest.raises(ValueError, match="--train-count 601 but the set has 600"):
        train_and_test(sets["real"], sets["test"], steps=0, train_count=601, **TINY)


def test_train_count_draws_only_the_first_images(sets: dict[str, Path]) -> None:
    # Labels in set order, to recognise which images a batch came from.
    loader = make_epoch_loader(sets["real"], 600, 0, 1, 0, 0, labels=("gaze",), shuffle=False)
    gaze = next(iter(loader))["gaze"].numpy()  # (600, 3)
    stream = BatchStream(
        sets["real"], read_manifest(sets["real"]), 64, 0, 1, 0, ("gaze",), max_images=300
    )
    assert stream.num_images == 300
    blocks = [b.count for b in stream.blocks]
    assert sum(blocks) == 300 and blocks[-1] < read_manifest(sets["real"]).block_size
    seen = np.concatenate([b["gaze"].numpy() for _, b in zip(range(6000), stream, strict=False)])
    index = {row.tobytes(): i for i, row in enumerate(gaze[:300])}
    assert all(row.tobytes() in index for row in seen)
    counts = np.bincount([index[row.tobytes()] for row in seen], minlength=300)  # (300,)
    assert counts.min() > 0
    # Blocks are drawn uniformly, so the images of the cut last block come as often as the
    # others (drawing by size would give them blocks[-1] / block_size as often; by the number
    # of blocks, never more).
    cut = counts[300 - blocks[-1] :].mean()
    whole = counts[: 300 - blocks[-1]].mean()
    assert 0.9 < cut / whole < 1.1, (cut, whole)
    with pytest.raises(ValueError, match="max_images 601, but the set has 600 images"):
        BatchStream(
            sets["real"], read_manifest(sets["real"]), 64, 0, 1, 0, ("gaze",), max_images=601
        )


def _one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distsim.evaluate: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


def test_one_line_errors(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "out"), "--steps", "1"]
    unlabelled = str(sets["unlabelled"])
    assert main(["gaze", "--train", unlabelled, "--test", str(sets["test"]), *out]) == 2
    _one_line_error(capsys.readouterr().err, f"{unlabelled}: no gaze labels")
    assert main(["gaze", "--train", str(sets["train"]), "--test", unlabelled, *out]) == 2
    _one_line_error(capsys.readouterr().err, f"{unlabelled}: no gaze labels")
    missing = str(tmp_path / "nowhere")
    assert main(["gaze", "--train", missing, "--test", str(sets["test"]), *out]) == 2
    _one_line_error(capsys.readouterr().err, missing)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # exactly one of --steps and --epochs
        main(["gaze", "--train", "a", "--test", "b", "--out", "c", "--steps", "1", "--epochs", "1"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, train: str, test: str, out: str) -> None:
    # A forked child must not enter the parent's OpenMP pool (it can hang there), as in
    # DataLoader workers.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        where = {"rank": rank, "world_size": world}
        reports = {
            "untrained": train_and_test(train, test, steps=0, **where, **TINY),
            "trained": train_and_test(
                train, test, steps=3, wrap_model=DistributedDataParallel, log_every=1,
                **where, **TINY,
            ),
        }  # fmt: skip
        Path(out, f"rank{rank}.json").write_text(json.dumps(reports))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_test_every_image_once(sets: dict[str, Path], tmp_path: Path) -> None:
    world = 2
    # fork, not spawn: a spawned child re-imports torch and the test module (~10 s per test on
    # 2 busy cores); these children only run gloo and small CPU ops.
    mp.start_processes(
        _rank,
        args=(world, _free_port(), str(sets["train"]), str(sets["test"]), str(tmp_path)),
        nprocs=world,
        start_method="fork",
    )
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    single = train_and_test(sets["train"], sets["test"], steps=0, **TINY)
    for report in reports:
        # Same seed, same weights: the split test set, synced, scores as the whole set does.
        untrained = report["untrained"]
        assert untrained["counts"]["test_images"] == N_TEST
        torch.testing.assert_close(
            untrained["mean_angular_error_deg"], single["mean_angular_error_deg"]
        )
        torch.testing.assert_close(untrained["within_pct"], single["within_pct"])
        trained = report["trained"]
        assert trained["counts"]["test_images"] == N_TEST
        assert trained["config"]["world_size"] == 2
        assert trained["counts"]["train_images_drawn"] == 3 * 32 * 2
    # DDP kept the ranks' weights equal, and the metrics are global: identical reports.
    for key in ("mean_angular_error_deg", "within_pct", "train_loss"):
        assert reports[0]["trained"][key] == reports[1]["trained"][key]


def test_a_report_that_cannot_be_written_is_one_line(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import errno

    write_text = Path.write_text

    def full(self: Path, *args, **kwargs):
        if self.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    flags = ["gaze", "--train", str(sets["train"]), "--test", str(sets["test"]), "--out",
             str(tmp_path / "eval"), "--steps", "0", "--num-workers", "0"]  # fmt: skip
    assert main(flags) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"distsim.evaluate: error: could not write {tmp_path / 'eval'}/metrics.json "
                      "([Errno 28] No space left on device)"]  # fmt: skip
