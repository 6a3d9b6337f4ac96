"""The job's cgroups: one directory per hierarchy it uses (v2, or the v1 hierarchies of a hybrid setup), holding
its memory, pids, cpu and cpuset limits, and on v1 its GPU device rules; killing everything in them; removing them.

Why one class for command and stage jobs: the worker gives its own stage jobs the same memory enforcement as a
tenant's command (compute/worker.py), through this same code."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from .devices import DeviceRules

log = logging.getLogger(__name__)
_LIMITED = ("memory", "pids", "cpu", "cpuset", "devices")  # the controllers a problem can be about


def _cgroup_hierarchies() -> tuple[Path | None, dict[str, Path]]:
    """This process's own cgroup directories: (the v2 one or None, {v1 controller: its directory})."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, {}
    v2_path = None
    v1_paths: dict[str, str] = {}
    for line in own:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        else:
            for ctrl in parts[1].split(","):
                v1_paths[ctrl] = parts[2]
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2_path is not None and v2 is None:
            base = _under_mount(mount_point, mount_root, v2_path)
            if base.is_dir():
                v2 = base
        elif fstype == "cgroup":
            for ctrl in options:
                if ctrl in v1_paths and ctrl not in v1:
                    base = _under_mount(mount_point, mount_root, v1_paths[ctrl])
                    if base.is_dir():
                        v1[ctrl] = base
    return v2, v1


def _under_mount(mount_point: str, mount_root: str, own_path: str) -> Path:
    rel = own_path
    if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root + "/")):
        rel = rel[len(mount_root):]
    return Path(mount_point) / rel.lstrip("/")


def _read_int_field(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


class JobCgroup:
    """The job's cgroup(s): one directory in the v2 hierarchy and/or one per v1 hierarchy it uses. The child
    joins all of them before exec (`procs_files`); `enforcement` says per resource what holds the limit."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        self.controllers: dict[str, tuple[int, Path]] = {}  # memory/pids/cpu/cpuset -> (version, directory)
        self.kill_file: Path | None = None  # v2 cgroup.kill
        self.v2: Path | None = None  # the v2 directory (cpu.stat is always there)
        self.cpuacct: Path | None = None  # a v1 cpuacct directory, for CPU time when there is no v2 one
        self.freezer: Path | None = None  # v1 freezer directory
        self.enforcement: dict[str, str] = {}
        self.problems: list[str] = []

    @classmethod
    def create(cls, name: str, *, memory_bytes: int, pids_max: int, cpu: float | None = None,
               cores: set[int] | None = None, devices: DeviceRules | None = None) -> JobCgroup:
        """A cgroup named `name` under this process's own, holding the limits given (cpu and cores may be left
        out: stage jobs get memory and pids only). Where a limit cannot be written, `problems` says why."""
        g = cls()
        v2_base, v1_bases = _cgroup_hierarchies()
        if v2_base is None and not v1_bases:
            g.problems.append("this process is in no cgroup hierarchy it can see")
        v2_dir: Path | None = None
        v2_controllers: set[str] = set()
        if v2_base is not None:
            v2_dir = g._mkdir(v2_base / name, f"cgroup v2 at {v2_base}")
            if v2_dir is not None:
                enabled = set(_read_text(v2_base / "cgroup.subtree_control").split())
                for ctrl in ("memory", "pids", "cpu", "cpuset"):
                    if ctrl not in enabled:  # fails (EBUSY) where our own cgroup holds processes: v1 or nothing
                        _best_effort_write(v2_base / "cgroup.subtree_control", f"+{ctrl}")
                v2_controllers = set(_read_text(v2_dir / "cgroup.controllers").split())
                g.v2 = v2_dir
                if (v2_dir / "cgroup.kill").exists():
                    g.kill_file = v2_dir / "cgroup.kill"

        def v1_dir(ctrl: str) -> Path | None:
            base = v1_bases.get(ctrl)
            if base is None:
                return None
            path = base / name
            if path in g.dirs:  # co-mounted controllers (cpu,cpuacct) share one directory
                return path
            return g._mkdir(path, f"cgroup v1 {ctrl} at {base}")

        def target(version: int, ctrl: str) -> tuple[Path | None, str]:
            if version == 2:
                if v2_dir is None:
                    return None, "no writable v2 cgroup"
                return (v2_dir, "") if ctrl in v2_controllers else (None, f"no v2 {ctrl} controller")
            return v1_dir(ctrl), f"no writable v1 {ctrl} cgroup"

        def apply(ctrl: str, files: dict[int, list[tuple[str, str]]], what: str) -> None:
            """Write the controller's files in v2 if it is there, else in v1; the last file holds the limit."""
            tried = []
            for version, writes in files.items():
                d, why_not = target(version, ctrl)
                if d is None:
                    tried.append(why_not)
                    continue
                try:
                    for fname, value in writes:
                        (d / fname).write_text(value)
                except OSError as e:
                    tried.append(f"v{version} {ctrl}: {e.strerror}")
                    continue
                g.controllers[ctrl] = (version, d)
                g.enforcement[ctrl] = f"cgroup v{version} {writes[-1][0]} ({what})"
                return
            g.problems.append(f"{ctrl}: " + "; ".join(tried))

        mib = memory_bytes / 2**20
        apply("memory", {2: [("memory.max", str(memory_bytes))], 1: [("memory.limit_in_bytes", str(memory_bytes))]},
              f"{mib:.0f} MiB for the whole job")
        version, memory_dir = g.controllers.get("memory", (0, None))
        if version == 2:
            _best_effort_write(memory_dir / "memory.swap.max", "0")  # type: ignore[operator]
            _best_effort_write(memory_dir / "memory.oom.group", "1")  # type: ignore[operator]
        elif version == 1:
            _best_effort_write(memory_dir / "memory.memsw.limit_in_bytes", str(memory_bytes))  # type: ignore
        apply("pids", {2: [("pids.max", str(pids_max))], 1: [("pids.max", str(pids_max))]}, f"{pids_max} processes")
        if cpu is not None:
            period = 100_000
            quota = max(1000, int(cpu * period))
            apply("cpu", {2: [("cpu.max", f"{quota} {period}")],
                          1: [("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(quota))]},
                  f"{cpu:g} cores of time")
        if cores:
            core_list = ",".join(map(str, sorted(cores)))
            mems = ""
            if "cpuset" in v1_bases:
                mems = (_read_text(v1_bases["cpuset"] / "cpuset.effective_mems").strip()
                        or _read_text(v1_bases["cpuset"] / "cpuset.mems").strip())
            apply("cpuset", {2: [("cpuset.cpus", core_list)], 1: [("cpuset.mems", mems or "0"),
                                                                  ("cpuset.cpus", core_list)]},
                  f"cores {core_list}")
        if devices is not None and devices.deny:
            d = v1_dir("devices")
            try:
                if d is None:
                    raise OSError(0, "no writable v1 devices cgroup (v2 would need a BPF device program)")
                for rule in devices.deny:
                    (d / "devices.deny").write_text(rule)
                g.controllers["devices"] = (1, d)
                g.enforcement["devices"] = f"cgroup v1 devices.deny ({devices.describe()})"
            except OSError as e:
                g.problems.append(f"devices: {e.strerror}")
        if g.kill_file is None:
            d = v1_dir("freezer")
            if d is not None and (d / "freezer.state").exists():
                g.freezer = d
        if g.v2 is None:
            d = v1_dir("cpuacct")
            if d is not None and (d / "cpuacct.usage").exists():
                g.cpuacct = d
        # A v1 directory created for a controller whose limit could not be written would hold the job for nothing.
        used = {d for _, d in g.controllers.values()} | {v2_dir, g.freezer, g.cpuacct}
        for d in [d for d in g.dirs if d not in used]:
            _best_effort_rmdir(d)
            g.dirs.remove(d)
        return g

    def _mkdir(self, path: Path, what: str) -> Path | None:
        try:
            path.mkdir()
        except OSError as e:
            self.problems.append(f"{what}: {e.strerror}")
            return None
        self.dirs.append(path)
        return path

    def why_not(self, ctrl: str) -> str:
        """Why `ctrl` holds no limit for this job."""
        mine = [p.split(": ", 1)[1] for p in self.problems if p.startswith(f"{ctrl}: ")]
        general = [p for p in self.problems if p.split(": ", 1)[0] not in _LIMITED]
        return "; ".join(general or mine) or "none available"

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    @property
    def holds_lifetime(self) -> bool:
        return bool(self.dirs)

    def describe_kill(self) -> str:
        if self.kill_file is not None:
            return "the job's cgroup is killed as a whole (cgroup v2 cgroup.kill)"
        if self.freezer is not None:
            return "the job's cgroup is frozen and killed (cgroup v1 freezer)"
        return "every process in the job's cgroup is killed until none is left"

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.kill()
            return
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, timeout: float = 5.0) -> None:
        """Kill every process of the job, including those that left its session (setsid) or double-forked."""
        kill_cgroup_dirs(self.dirs, self.kill_file, self.freezer, timeout)

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the job ever had (bubblewrap's own init does not always wait for them where
        we could see it in rusage)."""
        if self.v2 is not None:
            usec = _read_int_field(self.v2 / "cpu.stat", "usage_usec")
            return usec / 1e6 if usec is not None else None
        if self.cpuacct is not None:
            try:
                return int(_read_text(self.cpuacct / "cpuacct.usage")) / 1e9
            except ValueError:
                return None
        return None

    def peak_memory_mb(self) -> float | None:
        version, d = self.controllers.get("memory", (0, None))
        text = _read_text(d / ("memory.peak" if version == 2 else "memory.max_usage_in_bytes")) if d else ""
        try:
            return int(text) / 2**20
        except ValueError:
            return None

    def oom_killed(self) -> bool:
        version, d = self.controllers.get("memory", (0, None))
        if d is None:
            return False
        if version == 2:
            return (_read_int_field(d / "memory.events", "oom_kill") or 0) > 0
        kills = _read_int_field(d / "memory.oom_control", "oom_kill")
        if kills is not None:
            return kills > 0
        return (_read_int_field(d / "memory.oom_control", "under_oom") or 0) > 0  # old kernels

    def record(self, state_path: Path) -> None:
        """Write what `kill_recorded` needs to kill the whole job from another process (before the job starts:
        a job process killed right after still leaves its record); the runner adds the pid once it has one."""
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "cgroups": [str(d) for d in self.dirs],
                                   "kill_file": str(self.kill_file or "") or None,
                                   "freezer": str(self.freezer or "") or None, "pid": None}))
        os.replace(tmp, state_path)

    def remove(self) -> None:
        remove_cgroup_dirs(self.dirs, self.kill_file, self.freezer)


def kill_cgroup_dirs(dirs: list[Path], kill_file: Path | None, freezer: Path | None, timeout: float = 5.0) -> None:
    def pids() -> list[int]:
        found: set[int] = set()
        for d in dirs:
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    if kill_file is not None:
        _best_effort_write(kill_file, "1")
    frozen = False
    if freezer is not None and pids():
        frozen = _best_effort_write(freezer / "freezer.state", "FROZEN")  # no fork between listing and killing
        deadline = time.monotonic() + 1
        while frozen and _read_text(freezer / "freezer.state").strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + timeout
    while True:
        left = pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            _best_effort_write(freezer / "freezer.state", "THAWED")  # type: ignore[operator]  # let them die
            frozen = False
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def remove_cgroup_dirs(dirs: list[Path], kill_file: Path | None, freezer: Path | None) -> None:
    # A cgroup stays busy until the kernel has reaped its last process: seconds on a loaded machine, not ms.
    deadline = time.monotonic() + 30
    for d in dirs:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s: %s", d, e)
                    break
            kill_cgroup_dirs(dirs, kill_file, freezer, timeout=0.5)
            time.sleep(0.02)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _best_effort_write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _best_effort_rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
