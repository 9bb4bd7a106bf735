#!/bin/bash
# Simulate a 2-node job on this machine: 2 "nodes" x 2 processes, talking over 127.0.0.1.
#   launch/local_multinode.sh [train.py flags...]
#   e.g. launch/local_multinode.sh --preset smoke --run-dir runs/local
# It starts one `accelerate launch` per node, as launch/slurm_multi_node.sbatch does on
# a cluster (there srun starts them on different hosts), waits for both and exits with the
# first non-zero status, stopping the other node if one fails. Without CUDA the 4 ranks use
# gloo (distsim.train.make_accelerator asks Accelerate for the CPU backend).
# Environment: PORT (rendezvous port; default: a free one), NPROC_PER_NODE (default 2),
# PYTHON (default python3).
#
# Rendezvous: static, not c10d. With c10d each node's agent decides whether to host the
# rendezvous store by comparing the endpoint with its own addresses; on one machine both
# agents match 127.0.0.1, so whichever starts first hosts the store, and if that is the
# machine-rank-1 agent, Accelerate's port check on machine rank 0 then finds the port taken
# and refuses to start. With static, node rank 0 hosts the store and node rank 1 only
# connects (retrying until rank 0 is up), so start order does not matter. On a real cluster
# the nodes have different addresses and c10d is the better choice (the sbatch scripts use it).
#
# Teardown: a finished run prints nothing after the trainer's summary. Each rank destroys its
# process groups before exiting (distsim.train.main); left to interpreter shutdown, gloo's
# threads could abort a finished rank. One run (2026-11, before that) exited 0 after printing
# about 30 C++ stack frames ("frame #N: ..."); 17 runs since (9 in a row, 8 two at a time on 2
# busy cores) printed none, and tests/distributed/test_launch.py fails on such lines. If they come back:
# with static rendezvous the TCPStore lives in node 0's torchrun agent, and an agent that
# loses it during torchrun's exit barrier logs the store error and its C++ frames and still
# exits 0 (torch.distributed.elastic's _exit_barrier catches it); TORCH_CPP_LOG_LEVEL=ERROR
# hides the C++ side of such warnings, but also the useful ones, so it is not set here.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
NNODES=2
NPROC_PER_NODE=${NPROC_PER_NODE:-2}
if [[ -z ${PORT:-} ]]; then
    free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    PORT=$("$PYTHON" -c "$free_port")
fi
# 4 ranks share this machine's cores: one thread each unless told otherwise.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

launch=(
    "$PYTHON" -m accelerate.commands.launch
    --multi_gpu --num_machines "$NNODES" --num_processes $((NNODES * NPROC_PER_NODE))
    --main_process_ip 127.0.0.1 --main_process_port "$PORT" --rdzv_backend static
    --mixed_precision no --dynamo_backend no
)

echo "local_multinode: $NNODES nodes x $NPROC_PER_NODE processes, rendezvous 127.0.0.1:$PORT" >&2
# Rank 1 first on purpose: with static rendezvous it waits for rank 0's store.
"${launch[@]}" --machine_rank 1 "$REPO/distsim/train.py" "$@" &
pid1=$!
"${launch[@]}" --machine_rank 0 "$REPO/distsim/train.py" "$@" &
pid0=$!
# Ctrl-C or a TERM to this script stops both nodes (each launcher forwards TERM to its workers).
trap 'kill -TERM "$pid0" "$pid1" 2>/dev/null' INT TERM

# Poll rather than `wait -n`, which cannot say which job ended before bash 5.1.
status=0
running=("$pid0" "$pid1")
while ((${#running[@]})); do
    still=()
    for pid in "${running[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            still+=("$pid")
            continue
        fi
        wait "$pid"
        rc=$?
        if ((rc != 0 && status == 0)); then
            status=$rc
            node=$([[ $pid == "$pid0" ]] && echo 0 || echo 1)
            echo "local_multinode: node $node exited with status $rc; stopping the other" >&2
            kill -TERM "$pid0" "$pid1" 2>/dev/null
        fi
    done
    running=("${still[@]}")
    ((${#running[@]})) && sleep 1
done
exit "$status"
