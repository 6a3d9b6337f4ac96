"""Compute leasing: run a tenant's own command isolated from the platform, with its declared resources enforced.

`mf jobs submit --tenant T --cpu 2 --memory-gb 4 --time-limit 30m -- python train.py` ends up here: the worker
calls `tenant_workdir(tenant, job_id)` for the job's private directory and `run_command(argv, ...)` to run it.
The package: dirs.py (job directories, tenant uids), namespaces.py (bubblewrap, unshare), cgroups.py (the job's
cgroups, v2 and v1), devices.py (GPU device rules), limits.py (rlimits, cores, verdicts), run.py (run_command,
kill_recorded), stage.py (the same memory enforcement for the worker's own stage jobs).

Job directory (`MF_HOME/tenants/<tenant>/jobs/<job_id>/`):

    work/      the command's cwd and $HOME; files it leaves here stay (a requeued attempt of the same job reuses
               the directory, so it can resume from its own checkpoints)
    outputs/   $MF_OUTPUT_DIR: files the command writes here are the job's outputs; `SandboxResult.outputs_dir`
               points at it (nothing is copied)
    tmp/       $TMPDIR, private to the job
    logs/      stdout.log and stderr.log; attempts append to them

The process: argv is executed directly (never through a shell) in its own session and process group, with stdin
on /dev/null, stdout/stderr to the log files, umask 077, and a minimal environment: PATH (the parent's), LANG,
HOME, TMPDIR, MF_OUTPUT_DIR, OMP/MKL/OPENBLAS_NUM_THREADS = its core count, then the caller's `env` on top. Nothing
else of the parent's environment (MF_ADMIN_KEY, MF_DATABASE_URL, cloud credentials) reaches it.

Isolation (`isolation()` says which applies; the job's record says which did):

- `uid+bwrap` (worker is root, bubblewrap works): the command runs as a per-tenant unprivileged uid/gid (100000 +
  a stable hash of the tenant name mod 50000; no /etc/passwd entry needed; no supplementary groups), inside
  bubblewrap's fresh user, mount, pid, ipc, uts and (unless the tenant was granted network) network namespaces.
  Its filesystem is a new root holding read-only system directories (/usr, /bin, /lib*, /sbin, a few /etc files,
  the platform's Python if readable), a private /proc, a minimal /dev (no GPU device nodes unless the job asked for
  GPUs), a size-capped /tmp, and only its own work/, outputs/ and tmp/ read-write. MF_HOME, the database, the
  artifacts and every other job's directory are simply not there; nor is any process outside the job.
- `bwrap` (worker not root, unprivileged user namespaces allowed): the same namespaces and filesystem view. The
  command's processes keep the worker's uid outside their user namespace (only root can hand out other uids);
  it is the namespaces that keep them from the platform's files, processes, sockets and network.
- `uid` (root, bubblewrap missing or unusable): the per-tenant uid, and a fresh network namespace (unshare(2)
  CLONE_NEWNET before dropping root) unless network was granted. The filesystem is shared: file modes keep tenants
  apart (MF_HOME is made 0711 and `MF_HOME/tenants` is root-owned 0711; a tenant's directory, `jobs/`, the job
  directory and `logs/` are root:tenant-gid 0750; `work/`, `outputs/`, `tmp/` tenant-owned 0700), and the
  platform's own files must be private to it (the platform runs with umask 077; MF_HOME's other contents are
  0700/0600).
- `none`: not root and no usable bubblewrap. `run_command` refuses with a clear MFError unless the caller passed
  `allow_unisolated=True` (`mf worker --allow-unisolated`, for a single-user machine): then the command runs as
  the worker's own user and can read everything the worker can.

Network: none by default (a namespace with only loopback, so the control plane, Ray, the database and anything
else on the machine or beyond are unreachable; in `uid` mode even loopback is down). `network=True` (the operator's
per-tenant grant, `mf tenants set T --network`) shares the machine's network.

Limits, and what happens where the machine does not allow them (`SandboxResult.enforcement` says, per resource,
how it was enforced or why it was not; the worker stores it in the job's record):

The job gets a cgroup when this process can create one under its own cgroup (v2, or the v1 hierarchies of a
hybrid setup; as a rule only when root): per controller, v2 if the controller is enabled there, else v1.
- CPU: a quota of `cpu` cores per period (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), and a cpuset of ceil(cpu) cores
  (`cpuset.cpus`) the command cannot widen; the cores least used by this process's other jobs. Without a cpu
  controller: only `sched_setaffinity` to those cores, which a command can undo. With a time limit, RLIMIT_CPU
  ((time limit + grace) x cores per process) backs up the wall clock limit.
- Processes: `pids.max` (`MF_JOB_PIDS_MAX`, default 1024) for the whole job; without a pids controller,
  RLIMIT_NPROC = that many more processes than the job's uid already has (per uid, not per job).
- Memory: `memory.max` (+ `memory.swap.max` 0, `memory.oom.group` 1) or v1 `memory.limit_in_bytes` (+ memsw) for
  the whole job, all its processes together; the kernel OOM-kills it. Without a memory controller: RLIMIT_AS =
  memory_gb on every process (per process only, and it counts address space: CUDA or JIT runtimes can fail under
  it well below the limit). Core dumps are off.
  A job that fails is reported as over its memory limit when (a heuristic, first match wins): the cgroup counted
  an OOM kill; or its stderr ends with an out-of-memory error (`MemoryError`, numpy's `_ArrayMemoryError`,
  `std::bad_alloc`, `Cannot allocate memory`, Go's `runtime: out of memory`; not "CUDA out of memory", which is
  GPU memory we do not limit); or it was killed by SIGKILL/SIGSEGV/SIGABRT/SIGBUS with a peak RSS of at least
  90% of the limit.
- Lifetime: at the time limit, on `should_stop()` (cancel, preemption; polled every `POLL_SECONDS`) the job gets
  SIGTERM, then SIGKILL after `GRACE_SECONDS`; when the command exits, whatever it left running is killed. "The
  job" is its cgroup (killed with v2 `cgroup.kill`, else frozen with the v1 freezer and killed) and, under
  bubblewrap, its pid namespace (its init is killed, and with it every process in it). Either way a `setsid` or
  double-forked child does not survive. The command also asks for SIGKILL when the process that ran it dies
  (PR_SET_PDEATHSIG, and bubblewrap's --die-with-parent), but only the cgroup kill is relied upon.
  With neither (root without bubblewrap and without cgroups), only the process group is killed. The cgroups a
  job uses are written to `state_path` before it starts, so `kill_recorded(state_path)` can kill it from another
  process (the worker cancelling a job whose job process is gone).
- Disk: the job directory's size (work/ + outputs/ + tmp/, allocated blocks) is measured every
  `DISK_CHECK_SECONDS` and the job is killed at `disk_gb` (`MF_JOB_DISK_GB`, default 20); RLIMIT_FSIZE = the same
  cap stops any single file from growing past it between two checks. Under bubblewrap /tmp is a tmpfs of at most
  1 GiB (and its pages count as the job's memory).
- GPUs: the worker sets CUDA_VISIBLE_DEVICES to the devices it assigned. Where the job has a v1 `devices` cgroup,
  every GPU it was not given is denied there (and with no GPU, every NVIDIA node), so the kernel refuses the open
  whatever the job sets (devices.py; v2 would need a BPF device program, which is not loaded: there the record
  says CUDA_VISIBLE_DEVICES only). Under bubblewrap a job that asked for no GPU has no /dev/nvidia* at all, and a
  job with GPUs sees only its own /dev/nvidia<N> and the control nodes.

The API is plain data in and out: nothing is pickled, no shell is involved.
"""

from .cgroups import JobCgroup
from .dirs import UID_BASE, UID_RANGE, parse_duration, tenant_ids, tenant_workdir
from .namespaces import isolation, unisolated_refusal
from .run import SandboxResult, kill_recorded, run_command

__all__ = ["UID_BASE", "UID_RANGE", "JobCgroup", "SandboxResult", "isolation", "kill_recorded", "parse_duration",
           "run_command", "tenant_ids", "tenant_workdir", "unisolated_refusal"]
