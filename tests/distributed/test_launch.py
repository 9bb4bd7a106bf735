"""The launch scripts: a real 2-node x 2-process run through launch/local_multinode.sh, and
the SLURM scripts' preemption path (SIGUSR1 -> SIGTERM to the step -> requeue) run against
stand-ins for srun, scontrol and accelerate, since there is no SLURM here."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distsim.config import make_config
from tests.helpers import saved_settings

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SBATCH = sorted(LAUNCH.glob("*.sbatch"))


def _run_group(
    cmd: list[str], env: dict[str, str], timeout: float, log: Path
) -> subprocess.CompletedProcess:
    """Run cmd in its own process group with its output in log; on a timeout kill the whole
    group (launchers and workers), not only the shell."""
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{cmd[1]} timed out after {timeout} s:\n{log.read_text()[-3000:]}")
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, log.read_text(), None)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill whatever the command left running: the shell or its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_local_multinode_trains_two_nodes_of_two(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(LAUNCH / "local_multinode.sh"), "--preset", "smoke",
           "--builtin-count", "128", "--cache-dir", str(tmp_path / "cache"),
           "--run-dir", str(run_dir), "--num-workers", "0", "--no-progress"]  # fmt: skip
    proc = _run_group(cmd, env, timeout=300, log=tmp_path / "out.txt")
    assert proc.returncode == 0, proc.stdout[-3000:]
    # A clean teardown: no Python traceback, no C++ frames from c10d (launch/local_multinode.sh).
    noise = [line for line in proc.stdout.splitlines() if "Traceback" in line or "frame #" in line]
    assert not noise, proc.stdout[-6000:]
    assert "was asked for --num_processes" not in proc.stdout  # it got the 4 it asked for

    cfg = make_config("smoke")
    total = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps + cfg.schedule.steps
    state_file = run_dir / "checkpoints" / f"step-{total:08d}" / "state.pt"
    assert state_file.is_file(), sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert torch.load(state_file, map_location="cpu", weights_only=True)["world_size"] == 4
    assert saved_settings(run_dir / "config.json")["preset"] == "smoke"


@pytest.mark.parametrize(
    "launch",
    [
        ["--config_file", "launch/accelerate_one_gpu.yaml"],
        ["--config_file", "accelerate_config.yaml", "--num_processes", "2", "--mixed_precision",
         "no"],
    ],
    ids=["one-process", "two-processes"],
)  # fmt: skip
def test_documented_launches_print_no_warnings(tmp_path, launch):
    """`accelerate launch` with a config file fills in no defaults (it lists those it did, on
    stderr), and nothing else warns either: with --no-progress, stderr stays empty."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "distsim/train.py",
           "--preset", "smoke", "--builtin-count", "128", "--cache-dir", str(tmp_path / "cache"),
           "--run-dir", str(tmp_path / "run"), "--no-progress", "--pretrain-r-steps", "1",
           "--pretrain-d-steps", "1", "--steps", "1"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    world = 2 if "2" in launch else 1
    assert (
        torch.load(
            tmp_path / "run" / "checkpoints" / "step-00000003" / "state.pt", weights_only=True
        )["world_size"]
        == world
    )


@pytest.mark.parametrize("script", sorted(LAUNCH.glob("*.sh")) + SBATCH, ids=lambda p: p.name)
def test_launch_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


FAKE_SRUN = """#!/bin/bash
# srun: record its options, run the task as node 0, forward SIGTERM to it.
while [[ $1 == -* ]]; do echo "$1" >> "$FAKE_LOG/srun_options"; shift; done
export SLURM_NODEID=0 SLURM_PROCID=0
"$@" &
task=$!
trap 'kill -TERM "$task"' TERM
while :; do wait "$task"; rc=$?; kill -0 "$task" 2>/dev/null || exit "$rc"; done
"""
FAKE_ACCELERATE = """#!/bin/bash
# accelerate: record its arguments; on SIGTERM exit 1 as torchrun does for a failed child.
printf '%s\\n' "$@" > "$FAKE_LOG/accelerate_args.tmp"
mv "$FAKE_LOG/accelerate_args.tmp" "$FAKE_LOG/accelerate_args"
trap 'echo TERM >> "$FAKE_LOG/events"; exit 1' TERM
[[ -n ${FAKE_EXIT:-} ]] && exit "$FAKE_EXIT"
while :; do sleep 0.1; done
"""
FAKE_SCONTROL = """#!/bin/bash
case $1 in
    show) printf 'node-a\\nnode-b\\n' ;;
    requeue) echo "requeue $2" >> "$FAKE_LOG/events" ;;
esac
"""


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("accelerate", FAKE_ACCELERATE),
                       ("scontrol", FAKE_SCONTROL)):  # fmt: skip
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_SUBMIT_DIR": str(REPO),
    }


def _events(tmp_path: Path) -> list[str]:
    events = tmp_path / "log" / "events"
    return events.read_text().splitlines() if events.exists() else []


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_requeues_on_usr1_after_the_step_stops(script, tmp_path):
    text = script.read_text()
    assert "#SBATCH --signal=B:USR1@180" in text
    assert "#SBATCH --requeue" in text

    env = _fake_slurm(tmp_path)
    log = tmp_path / "out.txt"
    with log.open("w") as f:
        proc = subprocess.Popen(["bash", str(script), "--steps", "5"], env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        args_file = tmp_path / "log" / "accelerate_args"
        deadline = time.monotonic() + 60
        while not args_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert args_file.exists(), log.read_text()
        args = args_file.read_text().splitlines()
        assert args[0] == "launch"
        assert args[-6:] == ["--run-dir", "runs/slurm-4242", "--resume", "auto", "--steps", "5"]
        assert args[args.index("--main_process_port") + 1] == str(20000 + 4242 % 20000)
        if "multi" in script.name:
            assert args[args.index("--machine_rank") + 1] == "0"  # SLURM_NODEID
            assert args[args.index("--num_processes") + 1] == "16"
            assert args[args.index("--main_process_ip") + 1] == "node-a"
            assert args[args.index("--config_file") + 1] == "launch/accelerate_multi_node.yaml"
        else:
            assert args[args.index("--num_processes") + 1] == "8"

        os.kill(proc.pid, signal.SIGUSR1)  # what Slurm sends 180 s before the end
        proc.wait(timeout=60)
    finally:
        _kill_group(proc)
    out = log.read_text()
    assert proc.returncode == 0, out
    # The step got SIGTERM and ended before the job was requeued.
    assert _events(tmp_path) == ["TERM", "requeue 4242"], out


@pytest.mark.parametrize("status", [0, 1])
def test_sbatch_without_a_signal_passes_the_step_status_and_does_not_requeue(status, tmp_path):
    env = {**_fake_slurm(tmp_path), "FAKE_EXIT": str(status)}
    cmd = ["bash", str(LAUNCH / "slurm_multi_node.sbatch")]
    proc = _run_group(cmd, env, timeout=60, log=tmp_path / "out.txt")
    assert proc.returncode == status, proc.stdout
    assert _events(tmp_path) == []


def test_multi_node_accelerate_config():
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(LAUNCH / "accelerate_multi_node.yaml"))
    assert cfg.distributed_type == "MULTI_GPU" and cfg.mixed_precision == "bf16"
    # c10d needs main_process_ip:port passed as the rendezvous endpoint, not as MASTER_ADDR.
    assert cfg.rdzv_backend == "c10d" and cfg.same_network is False


def test_a_launch_that_starts_fewer_processes_than_asked_says_so(tmp_path):
    """`accelerate launch --num_processes 2 --cpu` without a config file or --multi_gpu starts
    one process: the run goes on, saying how to get two."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "distsim/train.py", "--preset", "smoke", "--cache-dir", str(tmp_path / "cache"),
           "--run-dir", str(tmp_path / "run"), "--num-workers", "0", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "--num_processes 2" in line]
    assert len(said) == 1 and "started 1 process" in said[0] and "--multi_gpu" in said[0]
