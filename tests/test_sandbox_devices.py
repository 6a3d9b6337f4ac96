"""GPU device fencing (compute/sandbox/devices.py): the rules a job's devices cgroup gets, and the kernel holding
them. There is no GPU here, so the attack uses NVIDIA's device numbers on nodes made for the test: without a
driver, opening 195:N outside the cgroup fails with ENXIO (the kernel let it through to a missing driver); inside
a job's cgroup that denies it, with EPERM (the cgroup refused it first)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelfactory.compute import sandbox
from modelfactory.compute.sandbox.devices import NVIDIA_MAJOR, gpu_device_rules, present_gpus, uvm_major

OPEN = ("import errno, os, sys\n"
        "try:\n    os.close(os.open(sys.argv[1], os.O_RDWR))\n    print('opened')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n")


def test_rules_deny_every_gpu_not_given():
    none = gpu_device_rules([], present=[0, 1, 2], uvm_major=510)
    assert none.deny == ("c 195:* rwm", "c 510:* rwm") and none.allowed == ()
    assert gpu_device_rules([], present=[], uvm_major=None).deny == ("c 195:* rwm",)
    some = gpu_device_rules([2, 0], present=[0, 1, 2, 3], uvm_major=510)
    assert some.deny == ("c 195:1 rwm", "c 195:3 rwm") and some.allowed == (0, 2)  # control nodes and uvm stay
    assert gpu_device_rules([0, 1], present=[0, 1], uvm_major=None).deny == ()
    assert some.describe() == "GPU 0, GPU 2 may be opened; 2 deny rule(s)"


def test_present_gpus_and_uvm_major_read_the_machine(tmp_path):
    for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    assert present_gpus(tmp_path) == [0, 3]
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n  1 mem\n195 nvidia-frontend\n508 nvidia-uvm\n\nBlock devices:\n")
    assert uvm_major(devices) == 508
    devices.write_text("Character devices:\n  1 mem\n")
    assert uvm_major(devices) is None


def _devices_cgroup() -> str | None:
    probe = sandbox.JobCgroup.create(f"mf-probe-dev-{os.getpid()}", memory_bytes=1 << 30, pids_max=100,
                                     devices=gpu_device_rules([], [], None))
    probe.remove()
    return None if "devices" in probe.controllers else probe.why_not("devices")


@pytest.mark.ci_required
def test_attack_a_job_cannot_open_a_gpu_it_was_not_given(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root (CI runs as root)")
    if why := _devices_cgroup():
        pytest.skip(f"no writable v1 devices cgroup here ({why}); on cgroup v2 GPUs are not fenced per device")
    nodes = {}
    for gpu in (0, 1):
        nodes[gpu] = tmp_path / f"nvidia{gpu}"
        os.mknod(nodes[gpu], 0o666 | 0o020000, os.makedev(NVIDIA_MAJOR, gpu))

    def open_in(rules) -> dict[int, str]:
        cgroup = sandbox.JobCgroup.create(f"mf-test-dev-{os.getpid()}", memory_bytes=1 << 30, pids_max=100,
                                          devices=rules) if rules is not None else None
        files = cgroup.procs_files if cgroup else []

        def join():
            for f in files:
                Path(f).write_text(str(os.getpid()))
        try:
            return {g: subprocess.run([sys.executable, "-c", OPEN, str(p)], capture_output=True, text=True,
                                      preexec_fn=join, timeout=60).stdout.strip() for g, p in nodes.items()}
        finally:
            if cgroup:
                cgroup.remove()

    missing_driver = errno.errorcode[errno.ENXIO]
    assert open_in(None) == {0: missing_driver, 1: missing_driver}  # no cgroup: the kernel lets it through
    assert open_in(gpu_device_rules([], [0, 1], None)) == {0: "EPERM", 1: "EPERM"}  # a job with no GPU
    assert open_in(gpu_device_rules([1], [0, 1], None)) == {0: "EPERM", 1: missing_driver}  # given GPU 1 only


def test_run_command_records_how_gpus_are_fenced(monkeypatch):
    top = Path(tempfile.mkdtemp(prefix="mf-devices-"))  # pytest's tmp dirs are 0700: a tenant uid cannot pass
    top.chmod(0o711)
    monkeypatch.setenv("MF_HOME", str(top / "home"))
    try:
        wd = sandbox.tenant_workdir("acme", 1)
        r = sandbox.run_command(["true"], tenant="acme", workdir=wd, cpu=1, memory_gb=0.5, time_limit_s=60,
                                allow_unisolated=sandbox.isolation("acme")[0] == "none", gpu_ids=[])
    finally:
        shutil.rmtree(top, ignore_errors=True)
    gpu = r.enforcement["gpu"]
    if _devices_cgroup() is None:
        assert gpu.startswith("cgroup v1 devices.deny (no GPU may be opened"), gpu
    else:
        assert gpu.startswith("CUDA_VISIBLE_DEVICES only: no device cgroup ("), gpu
