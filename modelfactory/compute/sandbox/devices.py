"""Which GPU device nodes a job may open: the rules its cgroup enforces where the kernel lets us (cgroup v1's
`devices` controller), whatever the job does to CUDA_VISIBLE_DEVICES.

Why rules and not only CUDA_VISIBLE_DEVICES: that variable is advice the job can overwrite; a device cgroup is
checked by the kernel on every open(2). v1's devices controller starts from its parent's "allow everything" and
takes exact deny entries, so each GPU the job was not given is denied by its own rule (a wildcard deny cannot be
carved back open); a job given no GPU loses the NVIDIA control nodes and nvidia-uvm as well. cgroup v2 has no
devices file: it needs a BPF_PROG_TYPE_CGROUP_DEVICE program, which this module does not load, so on a pure v2
machine the enforcement record says the GPUs are guarded by CUDA_VISIBLE_DEVICES (and, under bubblewrap, by the
absence of /dev/nvidia* for a job with no GPU) only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NVIDIA_MAJOR = 195  # /dev/nvidia<N> is 195:N; nvidiactl is 195:255, nvidia-modeset 195:254
_GPU_NODE = re.compile(r"^nvidia(\d+)$")


@dataclass(frozen=True)
class DeviceRules:
    """What a job's devices cgroup denies (v1 `devices.deny` lines) and the GPUs it keeps."""

    deny: tuple[str, ...]
    allowed: tuple[int, ...]

    def describe(self) -> str:
        kept = ", ".join(f"GPU {g}" for g in self.allowed) or "no GPU"
        return f"{kept} may be opened; {len(self.deny)} deny rule(s)"


def gpu_device_rules(assigned: Sequence[int], present: Sequence[int], uvm_major: int | None) -> DeviceRules:
    """The rules for a job given the GPUs `assigned` on a machine whose /dev holds the GPUs `present`.

    No GPU assigned: every NVIDIA node (major 195, whatever the minor) and nvidia-uvm are denied. Some assigned:
    each present GPU that is not is denied by its own rule; the control nodes stay (CUDA needs them)."""
    keep = tuple(sorted({int(g) for g in assigned}))
    if not keep:
        deny = [f"c {NVIDIA_MAJOR}:* rwm"] + ([f"c {uvm_major}:* rwm"] if uvm_major is not None else [])
        return DeviceRules(tuple(deny), ())
    return DeviceRules(tuple(f"c {NVIDIA_MAJOR}:{g} rwm" for g in sorted(set(present)) if g not in keep), keep)


def present_gpus(dev: Path = Path("/dev")) -> list[int]:
    """The GPU indices that have a /dev/nvidia<N> node here."""
    try:
        return sorted(int(m.group(1)) for name in os.listdir(dev) if (m := _GPU_NODE.match(name)))
    except OSError:
        return []


def uvm_major(proc_devices: Path = Path("/proc/devices")) -> int | None:
    """nvidia-uvm's character major (assigned when its module loads), if it is loaded."""
    try:
        for line in proc_devices.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == "nvidia-uvm" and parts[0].isdigit():
                return int(parts[0])
    except OSError:
        pass
    return None


def rules_for(assigned: Sequence[int]) -> DeviceRules:
    """`gpu_device_rules` for this machine."""
    return gpu_device_rules(assigned, present_gpus(), uvm_major())
