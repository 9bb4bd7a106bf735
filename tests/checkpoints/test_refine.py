"""distsim.refine on real shard sets and a real (smoke-trained) checkpoint: labels and order kept,
pixels equal to the refiner applied by hand, deterministic, and one process = two processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from distsim.checkpoints.models import load_models
from distsim.checkpoints.refine import PARTS_DIR, refine_shards
from distsim.checkpoints.store import latest_checkpoint, resolve_checkpoint
from distsim.config import make_config
from distsim.data.pixels import from_unit_range, to_unit_range
from distsim.refine import main
from distsim.training.loop import training_loop
from shards.cli import main as shards_main
from shards.format import MANIFEST_NAME, file_sha256, read_manifest
from shards.writer import ShardSetWriter
from tests.fixtures_sources import read_shard_set, shard_digests

REPO = Path(__file__).resolve().parents[2]
COUNT = 301  # odd: two ranks get 151 and 150 images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A smoke-trained run (trained once for the module) and a 301-image synthetic set whose
    shards and blocks are small enough that every run crosses shard and block boundaries."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a CPU training run may share the machine; keep to one core
    root = tmp_path_factory.mktemp("refine")
    cfg = make_config(
        "smoke", run_dir=str(root / "run"), cache_dir=str(root / "cache"), progress=False
    )
    training_loop(cfg)
    syn = root / "syn"
    args = ["convert", "sim-eyes", "--domain", "synthetic", "--count", str(COUNT), "--seed", "7"]
    assert shards_main([*args, "--out", str(syn), "--shard-size", "128", "--block-size", "64"]) == 0
    yield {"root": root, "run": root / "run", "syn": syn}
    torch.set_num_threads(threads)


def _refine_by_hand(run: Path, images: np.ndarray) -> np.ndarray:
    refiner, _, _ = load_models(run)
    with torch.no_grad():
        y = refiner.eval()(to_unit_range(torch.from_numpy(images))).numpy()  # (N, C, H, W)
    return np.clip(np.round((y + 1.0) * 127.5), 0, 255).astype(np.uint8)


def test_unit_range_round_trip() -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(from_unit_range(to_unit_range(values), "uint8"), values)
    # Depth codes (shards.depth): every valid code 1..65535 comes back exactly; a refined
    # crop has no invalid pixels (0), which the trainer fills before R sees them.
    wide = torch.tensor([1, 2, 32767, 32768, 65534, 65535], dtype=torch.int32).view(1, 1, 1, -1)
    assert torch.equal(from_unit_range(to_unit_range(wide), "uint16"), wide)
    assert from_unit_range(torch.tensor([-1.5, 1.5]), "uint16").tolist() == [1, 65535]


def test_refine_keeps_labels_and_order_and_applies_the_refiner(setup, tmp_path) -> None:
    syn, run, out = setup["syn"], setup["run"], tmp_path / "out"
    refiner, _, _ = load_models(run)
    info = {"path": "x", "step": 1, "refiner_sha256": "y"}
    manifest = refine_shards(refiner, syn, out, batch_size=64, num_workers=0, checkpoint=info)
    assert manifest is not None and manifest.count == COUNT
    assert not (out / PARTS_DIR).exists()

    source = read_manifest(syn)
    refined = read_manifest(out)
    assert refined.labels == source.labels  # names, shapes, dtypes, descriptions
    assert (refined.image_shape, refined.image_dtype) == (source.image_shape, source.image_dtype)
    assert [s.count for s in refined.shards] == [s.count for s in source.shards]
    assert refined.block_size == source.block_size
    assert (refined.labelled, refined.labels_for_evaluation_only) == (
        source.labelled,
        source.labels_for_evaluation_only,
    )
    assert refined.source == {
        "name": "refined",
        "input": str(syn.resolve()),
        "input_source": source.source,
        "checkpoint": info,
    }

    images, labels = read_shard_set(syn)
    out_images, out_labels = read_shard_set(out)
    assert out_labels.keys() == labels.keys()
    for name, values in labels.items():
        assert out_labels[name].dtype == values.dtype
        np.testing.assert_array_equal(out_labels[name], values, err_msg=name)
    assert out_images.shape == images.shape and out_images.dtype == np.uint8
    # Sample i is the refinement of input sample i: compare with the refiner applied by hand
    # to the whole set at once (another batching, so a float may round across .5 elsewhere).
    expected = _refine_by_hand(run, images)
    diff = np.abs(out_images.astype(np.int16) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert (out_images != images).mean() > 0.05  # the refiner did change the images


def test_int64_and_2d_labels_survive_and_a_label_called_index_is_refused(
    setup, tmp_path, capsys
) -> None:
    rng = np.random.default_rng(0)
    values = {
        "frame": rng.integers(-(2**40), 2**40, 37),
        "box": rng.normal(size=(37, 2, 2)).astype(np.float32),
    }
    images = rng.integers(0, 256, (37, 1, 35, 55), np.uint8)
    refiner, _, _ = load_models(setup["run"])
    for name in ("frame", "index"):
        data = tmp_path / name
        labels = {name: ((), "int64", "frame number"), "box": ((2, 2), "float32", "")}
        with ShardSetWriter(data, (1, 35, 55), "uint8", labels, {"name": "t"}, 20, 8) as w:
            w.add(images, {name: values["frame"], "box": values["box"]})
        if name == "index":
            # distsim.data's with_index key would overwrite it: refused, never corrupted.
            with pytest.raises(ValueError, match="label named 'index'"):
                refine_shards(refiner, data, tmp_path / "out-index", num_workers=0)
            continue
        refine_shards(refiner, data, tmp_path / "out", batch_size=16, num_workers=0)
        _, out_labels = read_shard_set(tmp_path / "out")
        for key, expected in (("frame", values["frame"]), ("box", values["box"])):
            assert out_labels[key].dtype == expected.dtype
            np.testing.assert_array_equal(out_labels[key], expected)


def _cli(setup, out: Path, *extra: str) -> int:
    return main(
        ["--run", str(setup["run"]), "--input", str(setup["syn"]), "--out", str(out),
         "--no-progress", *extra]
    )  # fmt: skip


def test_cli_is_deterministic_and_records_the_checkpoint(setup, tmp_path, capsys) -> None:
    run = setup["run"]
    assert _cli(setup, tmp_path / "a", "--batch-size", "64", "--num-workers", "0") == 0
    assert "warning" not in capsys.readouterr().err  # the final checkpoint: adversarial
    assert _cli(setup, tmp_path / "b", "--batch-size", "64", "--num-workers", "2") == 0
    assert shard_digests(tmp_path / "a") == shard_digests(tmp_path / "b")

    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    recorded = read_manifest(tmp_path / "a").source["checkpoint"]
    assert recorded == {
        "path": str(ckpt.resolve()),
        "step": int(ckpt.name.split("-")[1]),
        "weights": "raw",  # the run kept no weight average
        "refiner_sha256": file_sha256(ckpt / "refiner.safetensors"),
        "image_dtype": "uint8",  # what it was trained on: refine refuses depth with it
    }

    # An older checkpoint by step number: another refiner, so other pixels. Step 3 is in D's
    # pretraining (smoke: 2 + 2 steps), and refine says so.
    capsys.readouterr()
    assert _cli(setup, tmp_path / "c", "--checkpoint", "3", "--block-size", "100") == 0
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "before adversarial training began" in warning[0]
    older = read_manifest(tmp_path / "c")
    assert older.source["checkpoint"]["step"] == 3 and older.block_size == 100
    assert shard_digests(tmp_path / "c") != shard_digests(tmp_path / "a")


def test_two_processes_give_the_same_bytes_as_one(setup, tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    flags = ["--batch-size", "64", "--num-workers", "1"]
    assert _cli(setup, one, *flags) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(REPO / "distsim" / "refine.py"),
        "--run", str(setup["run"]), "--input", str(setup["syn"]), "--out", str(two),
        "--no-progress", *flags,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shard_digests(two) == shard_digests(one)
    assert not (two / PARTS_DIR).exists()
    assert read_manifest(two).source == read_manifest(one).source


def _inputs(setup, tmp_path: Path) -> dict[str, Path]:
    """Inputs that must be refused."""
    syn = setup["syn"]
    incomplete = tmp_path / "incomplete"
    shutil.copytree(syn, incomplete)
    (incomplete / MANIFEST_NAME).unlink()
    truncated = tmp_path / "truncated"
    shutil.copytree(syn, truncated)
    shard = truncated / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    colour, wide = tmp_path / "colour", tmp_path / "wide"
    for path, shape in ((colour, (3, 35, 55)), (wide, (1, 36, 60))):
        with ShardSetWriter(path, shape, "uint8", {}, {"name": "t"}) as w:
            w.add(np.zeros((4, *shape), np.uint8), {})
    return {"incomplete": incomplete, "truncated": truncated, "colour": colour, "wide": wide}


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("no-run", ["missing-run", "does not exist"]),
        ("empty-run", ["no checkpoint"]),
        ("no-meta", ["meta.json is missing"]),
        ("no-input", ["missing-input", "does not exist"]),
        ("incomplete", ["incomplete", "manifest.json"]),
        ("truncated", ["shard-000001.tar", "truncated"]),
        ("colour", ["3x35x55", "1x35x55", "channels"]),
        ("wide", ["1x36x60", "1x35x55"]),
        ("out-is-input", ["is the input directory"]),
        ("out-has-files", ["not empty (notes.txt)", "not a shard set", "--overwrite"]),
        ("out-is-a-file", ["exists and is not a directory"]),
    ],
)
def test_errors_are_one_line(setup, tmp_path, capsys, case: str, needles: list[str]) -> None:
    run, syn, out = setup["run"], setup["syn"], tmp_path / "out"
    if case == "no-run":
        run = tmp_path / "missing-run"
    elif case == "empty-run":
        run = tmp_path / "empty-run"
        run.mkdir()
    elif case == "no-meta":
        ckpt = tmp_path / "old-run" / "checkpoints" / "step-00000001"
        shutil.copytree(resolve_checkpoint(setup["run"]), ckpt)
        (ckpt / "meta.json").unlink()
        run = ckpt
    elif case == "no-input":
        syn = tmp_path / "missing-input"
    elif case == "out-is-input":
        out = syn
    elif case == "out-has-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "out-is-a-file":
        out.write_text("mine")
    elif case in ("incomplete", "truncated", "colour", "wide"):
        syn = _inputs(setup, tmp_path)[case]
    before = {p.name: p.stat().st_mtime_ns for p in setup["syn"].iterdir()}
    capsys.readouterr()
    code = main(["--run", str(run), "--input", str(syn), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("distsim.refine: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err)
    assert {p.name: p.stat().st_mtime_ns for p in setup["syn"].iterdir()} == before
    assert not (out / PARTS_DIR).exists()
    if case in ("out-has-files", "out-is-a-file"):  # nothing of the user's was touched
        assert (out / "notes.txt" if out.is_dir() else out).read_text() == "mine"


def test_overwrite_writes_into_a_folder_of_other_files_and_keeps_them(setup, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _cli(setup, out, "--overwrite", "--num-workers", "0") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert read_manifest(out).count == COUNT
