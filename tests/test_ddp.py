"""Data-parallel training (train/distributed.py): a gang of 2 processes (gloo, on this machine's CPUs) trains a tiny
model to the same weights as 1 process, and a gang whose member is killed mid-run resumes, as a gang, from the
checkpoint rank 0 wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

# Same rows per step, gradients summed in another order: float32 rounding only. Measured: 3e-8 after 24 steps.
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gang(out: Path, world: int, **env: str) -> list[int]:
    """Start `world` ranks of tests/ddp_support.py on `out`; returns their exit codes."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ddp_support", str(out)],
                              env={**os.environ, "MF_GANG": "1", "RANK": str(r), "WORLD_SIZE": str(world),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **env},
                              cwd=Path(__file__).parent.parent)
             for r in range(world)]
    return [p.wait(timeout=300) for p in procs]


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_two_processes_train_what_one_does(tmp_path):
    assert run_gang(tmp_path / "one", 1) == [0]
    assert run_gang(tmp_path / "two", 2) == [0, 0]
    one, two = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2) and one["steps"] == two["steps"] == 24
    assert abs(one["final_loss"] - two["final_loss"]) < TOLERANCE
    assert max_diff(tmp_path / "one", tmp_path / "two") < TOLERANCE


def test_leaving_the_gang_tears_its_process_group_down(tmp_path):
    """A group still alive at interpreter exit can SIGABRT a member that finished (gloo threads vs finalisation):
    seen as a gang exiting -6 after its work was done. The group must be gone, threads joined, when joined() ends."""
    assert run_gang(tmp_path, 2) == [0, 0]
    for rank in (0, 1):
        left = json.loads((tmp_path / f"threads_{rank}.json").read_text())
        assert not [t for t in left if "gloo" in t or "tcpstore" in t], (rank, left)


def test_a_gang_resumes_from_its_checkpoint_after_a_member_dies(tmp_path):
    out = tmp_path / "gang"
    codes = run_gang(out, 2, DDP_KILL_AT_STEP="6")  # checkpoints every 4 steps: the last one is step 4
    assert codes[1] == -9 and codes[0] != 0, codes  # rank 1 killed itself; rank 0 failed on the lost peer
    assert not (out / "result.json").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    assert run_gang(out, 2) == [0, 0]  # the gang again: resumes rather than starting over
    resumed = json.loads((out / "result.json").read_text())
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 24
    assert run_gang(tmp_path / "one", 1) == [0]
    assert max_diff(tmp_path / "one", out) < TOLERANCE  # and ends where an uninterrupted run does


def test_a_stop_asked_of_one_member_stops_the_whole_gang_at_one_checkpoint(tmp_path):
    out = tmp_path / "gang"
    assert run_gang(out, 2, DDP_STOP_AT_STEP="6") == [75, 75]  # both ranks stopped, not only the one asked
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6  # at the stop, not step 4
    assert run_gang(out, 2) == [0, 0]
    assert json.loads((out / "result.json").read_text())["resumed_from_step"] == 6
