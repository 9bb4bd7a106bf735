"""Training faults that lost or mixed up data, or ended in a traceback: one line each, and
nothing touched that the run did not write."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from distsim.checkpoints.store import list_checkpoints
from distsim.train import main
from tests.training.test_faults import _flags, _one_line


def _listing(root: Path) -> dict[str, int]:
    """Every file under root with its modification time: what "nothing touched" compares."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_a_new_run_into_another_runs_directory_is_refused_and_touches_nothing(tmp_path, capsys):
    assert main(_flags(tmp_path, "run", "--steps", "4", "--ckpt-every", "2",
                       "--keep-checkpoints", "0")) == 0  # fmt: skip
    before = _listing(tmp_path / "run")
    capsys.readouterr()
    assert main(_flags(tmp_path, "run", "--seed", "3")) == 2
    _one_line(capsys, f"{tmp_path / 'run'}: already holds another run's checkpoints",
              "newest step-00000008", "--resume auto", "another --run-dir")  # fmt: skip
    assert _listing(tmp_path / "run") == before
    assert json.loads((tmp_path / "run" / "config.json").read_text())["schedule"]["seed"] == 0
    # Resuming it is what --resume auto is for; a directory without checkpoints is free.
    assert main(_flags(tmp_path, "run", "--resume", "auto", "--steps", "5")) == 0
    assert main(_flags(tmp_path, "other", "--seed", "3")) == 0


def test_a_manifest_naming_a_huge_block_size_trains_in_bounded_memory(tmp_path):
    """512 images in one block, whose manifest says block_size 100,000,000 (as `shards
    convert --block-size 100000000` writes them): the resampled stream's chunk holds at most
    CHUNK_BYTES, not 400 million images (717 GiB)."""
    from distsim.data.streams import CHUNK_BYTES, BatchStream
    from shards.format import read_manifest
    from shards.sources.sim_eyes import convert_sim_eyes

    for domain, seed in (("synthetic", 1), ("real", 2)):
        convert_sim_eyes(tmp_path / domain, domain, 512, seed, block_size=100_000_000,
                         progress=False)  # fmt: skip
    manifest = read_manifest(tmp_path / "synthetic")
    assert manifest.block_size == 100_000_000
    stream = BatchStream(tmp_path / "synthetic", manifest, 32, 0, 1, 0, labels=())
    assert stream.batches_per_chunk * 32 * 35 * 55 <= CHUNK_BYTES + 32 * 35 * 55
    flags = _flags(tmp_path, "run", "--synthetic", str(tmp_path / "synthetic"), "--real",
                   str(tmp_path / "real"))  # fmt: skip
    assert main(flags) == 0
    assert [c.name for c in list_checkpoints(tmp_path / "run")][-1] == "step-00000007"


def test_a_truncated_checkpoint_from_before_checksums_is_skipped_or_one_line(tmp_path, capsys):
    assert main(_flags(tmp_path, "run", "--steps", "4", "--ckpt-every", "4",
                       "--keep-checkpoints", "0")) == 0  # fmt: skip
    ckpts = list_checkpoints(tmp_path / "run")
    for ckpt in ckpts:  # as checkpoints were before SHA256SUMS
        (ckpt / "SHA256SUMS").unlink()
    state = ckpts[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    capsys.readouterr()
    assert main(_flags(tmp_path, "run", "--resume", str(ckpts[-1]))) == 2
    _one_line(capsys, str(ckpts[-1]), "state.pt cannot be read, truncated or corrupt")
    assert main(_flags(tmp_path, "run", "--resume", "auto", "--steps", "4")) == 0
    out = capsys.readouterr().out
    assert f"resuming from {ckpts[0]}" in out and "state.pt cannot be read" in out


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--history-size", "100000000000"],
         ["--history-size 100000000000 needs", "GiB for its images on cpu", "make it smaller"]),
        (["--seed", "-1"], ["--seed must be in [0, 2147483647], got -1"]),
        (["--seed", "12345678901234567890"], ["--seed must be in [0, 2147483647]"]),
        (["--builtin-seed", "-3"], ["--builtin-seed must be in [0, 2147483647], got -3"]),
        (["--refiner-blocks", "0"], ["--refiner-blocks must be positive, got 0"]),
    ],
)  # fmt: skip
def test_impossible_settings_are_one_line(tmp_path, capsys, flags, needles) -> None:
    assert main(_flags(tmp_path, "run", *flags)) == 2
    _one_line(capsys, *needles)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_resume_with_another_preset_is_refused(tmp_path, capsys) -> None:
    assert main(_flags(tmp_path, "run", "--steps", "1")) == 0
    capsys.readouterr()
    flags = _flags(tmp_path, "run", "--resume", "auto")
    flags[flags.index("smoke")] = "cpu"
    assert main(flags) == 2
    _one_line(capsys, "made with --preset smoke", "--preset cpu would change none of them")
    again = _flags(tmp_path, "run", "--resume", "auto", "--steps", "2")  # the same preset: fine
    assert main(again) == 0


def test_a_bad_block_is_counted_once_whatever_the_worker_count(tmp_path) -> None:
    """--on-bad-shard skip with --num-workers 2: both workers meet the one bad block of 32
    images, and TensorBoard counts it once."""
    import warnings

    from distsim.data import make_loader
    from shards.sources.sim_eyes import convert_sim_eyes
    from tests.data.test_data import flip_byte, member_offset
    from tests.helpers import scalars

    for domain, seed in (("synthetic", 1), ("real", 2)):
        convert_sim_eyes(tmp_path / domain, domain, 256, seed, block_size=32, progress=False)
    shard = tmp_path / "synthetic" / "shard-000000.tar"
    flip_byte(shard, member_offset(shard, "00000003.image.npy") + 200)  # a pixel of block 3
    flags = _flags(tmp_path, "run", "--synthetic", str(tmp_path / "synthetic"), "--real",
                   str(tmp_path / "real"), "--on-bad-shard", "skip", "--num-workers", "2",
                   "--steps", "100")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(flags) == 0
        # Both workers of the run's synthetic stream met the block: summing what each said,
        # as counts used to be, gives 2 blocks.
        loader = make_loader(tmp_path / "synthetic", 8, 0, 1, 0, 2, labels=(),
                             on_error="skip")  # fmt: skip
        with loader:
            met = [b["skipped_blocks"] for b, _ in zip(loader, range(320), strict=False)]
    assert sum(met) == 2
    logged = scalars(tmp_path / "run")
    assert logged["data/skipped_blocks_synthetic"][-1] == 1
    assert logged["data/skipped_images_synthetic"][-1] == 32
    assert logged["data/skipped_images_real"][-1] == 0


def test_data_of_another_kind_is_refused_by_training_refining_and_evaluating(tmp_path, capsys):
    """8-bit eyes and uint16 depth codes map onto [-1, 1] differently: a refiner trained on
    one refines the other into nonsense, so every tool refuses the mix in one line."""
    from distsim.checkpoints.store import image_dtype, latest_checkpoint
    from distsim.evaluate import main as evaluate_main
    from distsim.refine import main as refine_main
    from distsim.training.loop import training_loop
    from shards.sources.sim_eyes import convert_sim_eyes
    from shards.sources.sim_hands import convert_sim_hands
    from tests.training.test_train_hands import _hand_cfg

    eyes, hands = tmp_path / "eyes", tmp_path / "hands"
    convert_sim_eyes(eyes, "synthetic", 64, 1, progress=False)
    convert_sim_hands(hands, "synthetic", 48, 1, size=32, progress=False)
    depth_run = training_loop(_hand_cfg(tmp_path))
    assert image_dtype(latest_checkpoint(depth_run)) == "uint16"
    capsys.readouterr()
    assert refine_main(["--run", str(depth_run), "--input", str(eyes), "--out",
                        str(tmp_path / "out"), "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err
        and f"{eyes}: images are uint8 (8-bit images) but the refiner was "
        "trained on uint16 (depth codes)"
        in err
    )
    assert not (tmp_path / "out").exists()
    # Training eye settings on depth, or depth settings on eyes.
    real = tmp_path / "hands-real"
    convert_sim_hands(real, "real", 48, 2, size=32, progress=False)
    assert main(_flags(tmp_path, "mix", "--synthetic", str(hands), "--real", str(real))) == 2
    _one_line(capsys, f"{hands}: uint16 depth crops, but --preset smoke's settings are for "
              "8-bit images", "--preset hands-cpu")  # fmt: skip
    eyes_real = tmp_path / "eyes-real"
    convert_sim_eyes(eyes_real, "real", 64, 2, progress=False)
    flags = _flags(tmp_path, "mix2", "--synthetic", str(eyes), "--real", str(eyes_real))
    flags[flags.index("smoke")] = "hands-cpu"
    assert main(flags) == 2
    _one_line(capsys, f"{eyes}: uint8 images, but --preset hands-cpu's settings are for depth")
    # The gaze estimator reads 8-bit eyes only.
    from shards.writer import ShardSetWriter

    fake = tmp_path / "uint16-eyes"
    gaze = ((3,), "float32", "unit gaze")
    with ShardSetWriter(fake, image_shape=(1, 35, 55), image_dtype="uint16",
                        labels={"gaze": gaze}, source={"name": "test"}) as writer:  # fmt: skip
        import numpy as np

        writer.add(np.ones((8, 1, 35, 55), np.uint16), {"gaze": np.tile([0, 0, -1.0], (8, 1))})
    assert evaluate_main(["gaze", "--train", str(fake), "--test", str(fake), "--out",
                          str(tmp_path / "eval"), "--steps", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "images are uint16; the gaze estimator needs uint8 eyes" in err


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_full(*args, **kwargs):
    raise RuntimeError(
        "[enforce fail at inline_container.cc:859] . basic_ios::clear: iostream error"
    )


def _safetensors_full(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                          'message: "No space left on device" })')  # fmt: skip


# A thread's traceback reaches pytest's hook, not stderr: make it fail the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize(
    ("target", "failure", "needles"),
    [
        ("distsim.checkpoints.store.torch.save", _torch_full,
         ["could not write checkpoint step 3", "basic_ios::clear"]),
        ("distsim.checkpoints.store.save_file", _safetensors_full,
         ["could not write checkpoint step 3", "code: 28"]),
        ("distsim.training.logs.save_png", _full,
         ["could not write", "images/step-00000002.png", "No space left on device"]),
        ("distsim.training.logs.plot_curves", _full,
         ["could not write", "images/losses.png", "No space left on device"]),
        ("tensorboard.summary.writer.record_writer.RecordWriter.write", _full,
         ["could not write", "/tensorboard (", "No space left on device"]),
    ],
)  # fmt: skip
def test_a_full_disk_in_any_writer_is_one_line(tmp_path, capsys, monkeypatch, target, failure,
                                               needles) -> None:  # fmt: skip
    monkeypatch.setattr(target, failure)
    capsys.readouterr()
    assert main(_flags(tmp_path, "run")) == 2
    _one_line(capsys, *needles)  # and no traceback, from the writer's thread either


def test_a_config_json_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "config.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    assert main(_flags(tmp_path, "run")) == 2
    _one_line(capsys, f"could not write {tmp_path / 'run' / 'config.json'}", "No space left")


def test_renders_converted_as_sensor_depth_are_warned_about_in_training_and_refining(
    tmp_path, capsys
) -> None:
    """Synthetic crops with invalid pixels (renders converted without --depth synth): the
    trainer says so before training, and refine says where the refiner wrote depths no
    measurement was near."""
    import shutil

    from distsim.refine import main as refine_main
    from shards.cli import main as shards_main
    from tests.fixtures_sources import write_nyu_dir

    renders, sensor = tmp_path / "renders", tmp_path / "sensor"
    write_nyu_dir(renders, frames=4)
    write_nyu_dir(sensor, frames=4, seed=1)
    for view in (1, 2, 3):
        for f in range(1, 5):
            shutil.copy(renders / f"synthdepth_{view}_{f:07d}.png",
                        renders / f"depth_{view}_{f:07d}.png")  # fmt: skip
    for src, out in ((renders, "syn"), (sensor, "real")):
        assert shards_main(["convert", "nyu", "--input", str(src), "--out", str(tmp_path / out),
                            "--views", "1,2,3", "--size", "32", "--crop", "cube"]) == 0  # fmt: skip
    capsys.readouterr()
    flags = _flags(tmp_path, "run", "--synthetic", str(tmp_path / "syn"), "--real",
                   str(tmp_path / "real"), "--builtin-sim", "hands", "--disc-arch", "hands",
                   "--psi", "identity", "--refiner-output", "local_range", "--history-size",
                   "16")  # fmt: skip
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert f"distsim.train: warning: {tmp_path / 'syn'}: " in err
    assert "which renders never are: renders converted as sensor depth?" in err
    assert refine_main(["--run", str(tmp_path / "run"), "--input", str(tmp_path / "syn"),
                        "--out", str(tmp_path / "refined"), "--no-progress"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "distsim.refine: warning: the refiner wrote depths into" in err
    assert "whose whole window in" in err and "held no measurement" in err


def test_a_resume_that_changes_the_refiners_drop_out_head_is_one_line(tmp_path, capsys):
    """--refiner-dropout adds a channel to R's head: resuming without it would load weights
    of the wrong shape (a traceback from load_state_dict), so it is an architecture flag."""
    hands = ["--preset", "hands-cpu", "--builtin-count", "48", "--builtin-size", "32",
             "--pretrain-r-steps", "1", "--pretrain-d-steps", "1", "--steps", "1",
             "--batch-size", "4", "--history-size", "8", "--realism-images", "0",
             "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"),
             "--no-progress"]  # fmt: skip
    assert main(hands) == 0
    capsys.readouterr()
    assert main([*hands, "--resume", "auto", "--no-refiner-dropout"]) == 2
    _one_line(capsys, "trained with --refiner-dropout True, this run asks for False",
              "the architecture cannot change on resume")  # fmt: skip
