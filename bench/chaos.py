"""Chaos on the compute pool: several text and image orders run on `mf server` (control plane, scheduler, two local
workers) while a seeded chaos loop, at random moments, kills a worker (kill -9), kills the server (kill -9, then
starts it again on the same port), or pauses a worker past its lease (SIGSTOP, then SIGCONT). The same orders
also run undisturbed first, in the same invocation and on the same kind of database, as the reference.

    .venv/bin/python bench/chaos.py                      # SQLite and PostgreSQL, 8 orders, >= 50 faults per chaos pass
    .venv/bin/python bench/chaos.py --db sqlite --orders 2 --min-faults 5      # a quick look

Everything goes through what an operator and a tenant use: `mf server` and its HTTP API (tenant, orders), `mf data
add` against it (uploads); the database is read directly only to check the outcome (orders, registered models,
the jobs table against the usage ledger). Per database it reports (bench/results/chaos.md and chaos.json):
faults by kind (and which stages were running when each landed), orders completed, registered models whose
metrics equal the undisturbed run's, attempts billed exactly once, processes of killed workers/servers still alive
after the run, and temporary directories left behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEASE_S, HEARTBEAT_S = 5, 0.5  # shortened like the pool's tests, so a paused worker loses its lease within seconds
POOL_ENV = {"MF_LEASE_TIMEOUT_S": str(LEASE_S), "MF_HEARTBEAT_S": str(HEARTBEAT_S), "MF_WORKER_POLL_S": "0.1",
            "MF_SCHEDULE_INTERVAL_S": "0.2", "MF_PREEMPT_GRACE_S": "30", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}
KINDS = ("worker_kill", "server_kill", "worker_pause")
WEIGHTS = (0.2, 0.06, 0.74)  # a server restart costs minutes on a loaded 2-core machine (workers import torch again)
TERMINAL_ORDERS = ("done", "missed_targets", "failed", "cancelled")
# Measured, not computed: these differ between two runs of the same seeded training and are not compared.
TIMING_WORDS = ("latency", "_ms", "ms_", "seconds", "per_s", "throughput", "time", "speedup", "duration")


# --- inputs ------------------------------------------------------------------------------------------------------
def build_orders(work: Path, n: int) -> list[dict]:
    """n orders, alternating text and image ones (small cuts of the shipped corpora): each order's dataset file
    under `work` and its spec."""
    import pandas as pd

    from modelfactory.data import builtin
    from modelfactory.data.ingest import read_table

    c = builtin.corpus("rotten-tomatoes")
    reviews = pd.DataFrame(read_table(c.path(), c.roles).rows)
    digits = pd.DataFrame(builtin.corpus("digits").table().rows)
    from tests.conftest import make_tiny_teacher

    teacher = make_tiny_teacher(work / "models" / "tiny-bert")
    orders = []
    for i in range(n):
        if i % 2 == 0:  # text and image orders in turn
            per_label = 30 + 5 * (i % 4)
            parts = [g.sample(n=per_label, random_state=i) for _, g in reviews.groupby("label")]
            path = work / f"reviews-{i}.csv"
            pd.concat(parts).sample(frac=1, random_state=i).to_csv(path, index=False)
            small = {"optimize_onnx": False, "quantize": "none"} if i % 4 else {}
            spec = {"name": f"chaos-text-{i}", "task": "text-classification", "data": {"dataset": f"reviews-{i}"},
                    "teacher": {"model": str(teacher), "epochs": 3, "max_length": 32, "lr": 1e-3, "min_steps": 0,
                                "retries": 0, "batch_size": 4, "checkpoint_every": 5},
                    "student": {"layers": 1, "epochs": 1, "lr": 1e-3},
                    "split": {"val": 0.15, "test": 0.2, "seed": i}, **small}
        else:
            root = work / f"digits-{i}"
            for label, group in digits.groupby("label"):
                (root / str(label)).mkdir(parents=True)
                for j, data in enumerate(group["image"].sample(n=10, random_state=i)):
                    (root / str(label) / f"{j:03d}.png").write_bytes(data)
            path = work / f"digits-{i}.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                tar.add(root, arcname=".")
            spec = {"name": f"chaos-image-{i}", "task": "image-classification", "data": {"dataset": f"digits-{i}"},
                    "teacher": {"model": "scratch:resnet-xs", "epochs": 2, "lr": 3e-3, "batch_size": 16,
                                "checkpoint_every": 5},
                    "recipe": [{"distill": {"layers": 1, "hidden": 8, "epochs": 2, "lr": 5e-3, "batch_size": 16}}],
                    "optimize_onnx": False, "split": {"val": 0.15, "test": 0.2, "seed": i}}
        orders.append({"dataset": spec["data"]["dataset"], "file": path, "spec": spec})
    return orders


# --- processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks) of every live process (a zombie counts as dead)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                out[int(d)] = (int(fields[1]), fields[19])
    return out


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live process below `root`."""
    table = proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo += kids.get(pid, [])
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Server:
    """`mf server --workers 2` on a fixed port; it can be killed and started again."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log, self.port = env, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, str] = {}  # every process it ever had below it: pid -> start time
        self.servers: set[int] = set()
        self.orphaned: dict[int, list[float]] = {}  # pid -> [first, last] monotonic time seen without its parent
        self.starts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfactory.cli", "server", "--workers", "2", "--worker-cpu", "1",
             "--worker-memory-gb", "4", "--port", str(self.port)], cwd=REPO, env=self.env,
            stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        self.seen[self.proc.pid] = proc_table().get(self.proc.pid, (0, "?"))[1]
        self.servers.add(self.proc.pid)
        self.starts += 1

    def wait_ready(self, admin: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mf server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/me", headers={"Authorization": f"Bearer {admin}"},
                             timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mf server not ready after {timeout:.0f} s")

    def workers(self) -> list[int]:
        """The pids of its worker processes (its children running `mf worker`)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        table = proc_table()
        return [p for p, (ppid, _) in table.items() if ppid == self.proc.pid and " worker " in cmdline(p)]

    def track(self) -> None:
        """Note every process below the server, and which of those seen before now live without their parent
        (a killed worker's job or forkserver, reparented to init)."""
        if self.proc is not None and self.proc.poll() is None:
            self.seen.update(descendants(self.proc.pid))
        table, now = proc_table(), time.monotonic()
        for pid, start in self.seen.items():
            if pid in self.servers or table.get(pid, (0, ""))[1] != start:
                continue
            ppid = table[pid][0]
            if self.seen.get(ppid) != table.get(ppid, (0, ""))[1]:
                self.orphaned.setdefault(pid, [now, now])[1] = now

    def lingering(self, more_than_s: float = 30) -> list[dict]:
        """Processes seen alive without their parent for more than `more_than_s` during the pass."""
        return [{"pid": p, "cmd": cmdline(p)[:160] or "(gone)", "orphaned_s": round(last - first, 1)}
                for p, (first, last) in self.orphaned.items() if last - first > more_than_s]

    def kill(self) -> None:
        self.track()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.track()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def survivors(self) -> list[dict]:
        """Processes it (or its workers and jobs) ever had that are still alive: same pid, same start time."""
        table = proc_table()
        return [{"pid": p, "cmd": cmdline(p)[:200]} for p, start in self.seen.items()
                if p in table and table[p][1] == start]


# --- one pass ----------------------------------------------------------------------------------------------------
def running_stages(db) -> list[str]:
    from sqlalchemy import text

    with db.connect() as c:
        return [r[0] for r in c.execute(text("SELECT name FROM jobs WHERE state = 'running'"))]


class Chaos(threading.Thread):
    """Inject faults at random (seeded) moments until told to stop; records each one."""

    def __init__(self, server: Server, db, seed: int, admin: str, gap: tuple[float, float]):
        super().__init__(daemon=True)
        self.server, self.db, self.admin, self.gap = server, db, admin, gap
        self.rng = random.Random(seed)
        self.faults: list[dict] = []
        self.halt = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.is_set():
            # A fault lands on a working pool: the server answering and at least one worker heartbeating (on a
            # loaded 2-core machine a worker takes a minute or two to import its libraries after a restart, and
            # faults faster than that would only ever hit start-up).
            deadline = time.monotonic() + 600
            while not self.recovered() and time.monotonic() < deadline and not self.halt.wait(0.5):
                pass
            if self.halt.wait(self.rng.uniform(*self.gap)):
                return
            kind = self.rng.choices(KINDS, weights=WEIGHTS)[0]
            try:
                self.inject(kind, t0)
            except Exception as e:  # noqa: BLE001 - reported, and the loop goes on
                self.errors.append(f"{kind}: {type(e).__name__}: {e}")

    def live_workers(self) -> list[int]:
        """pids of the server's workers that are registered and heartbeating."""
        from sqlalchemy import text

        pids = set(self.server.workers())
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        try:
            with self.db.connect() as c:
                rows = c.execute(text("SELECT pid, last_heartbeat, state FROM workers")).all()
        except Exception:  # noqa: BLE001 - e.g. SQLite busy: none known this time
            return []
        out = []
        for pid, beat, state in rows:
            beat = dt.datetime.fromisoformat(beat) if isinstance(beat, str) else beat
            if pid in pids and state == "up" and (now - beat.replace(tzinfo=None)).total_seconds() < LEASE_S:
                out.append(pid)
        return out

    def recovered(self) -> bool:
        try:
            up = httpx.get(f"{self.server.url}/api/v1/me", headers={"Authorization": f"Bearer {self.admin}"},
                           timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
        return up and bool(self.live_workers())

    def inject(self, kind: str, t0: float) -> None:
        s = self.server
        s.track()
        try:
            hit = running_stages(self.db)
        except Exception:  # noqa: BLE001 - the database itself is not what is measured here
            hit = []
        if kind == "server_kill":
            s.kill()
            s.start()
            s.wait_ready(self.admin)
            detail = f"restarted, pid {s.proc.pid}"
        else:
            pids = self.live_workers()
            if not pids:
                return
            pid = self.rng.choice(sorted(pids))
            if kind == "worker_kill":
                os.kill(pid, signal.SIGKILL)
                detail = f"pid {pid}"
            else:
                os.kill(pid, signal.SIGSTOP)
                pause = LEASE_S + self.rng.uniform(1, 4)
                time.sleep(pause)
                os.kill(pid, signal.SIGCONT)
                detail = f"pid {pid} paused {pause:.1f} s (lease {LEASE_S} s)"
        self.faults.append({"kind": kind, "at_s": round(time.monotonic() - t0, 1), "running": hit,
                            "detail": detail})


def post(c: httpx.Client, path: str, errors: list[str], **kw) -> httpx.Response:
    """POST, retried on a 5xx (each one recorded: a server error is a finding, not noise)."""
    for _ in range(3):
        r = c.post(path, **kw)
        if r.status_code < 500:
            return r
        errors.append(f"POST {path}: HTTP {r.status_code} {r.text[:300]}")
        time.sleep(2)
    return r


def submit(server: Server, admin: str, env: dict, orders: list[dict], errors: list[str]) -> dict[int, str]:
    """As a tenant would: the admin creates tenant acme, acme uploads each dataset with `mf data add` against
    the server and submits each order (YAML) through the API. Returns order id -> model name."""
    with httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {admin}"},
                      timeout=300) as c:
        r = post(c, "/tenants", errors, json={"name": "acme"})
        if r.status_code != 201:
            raise RuntimeError(f"POST /tenants: HTTP {r.status_code} {r.text[:500]}")
        key = r.json()["api_key"]
        for o in orders:
            up = subprocess.run([sys.executable, "-m", "modelfactory.cli", "data", "add", o["dataset"], str(o["file"]),
                                 "--json"], cwd=REPO, capture_output=True, text=True, timeout=600,
                                env={**env, "MF_SERVER": server.url, "MF_API_KEY": key})
            if up.returncode != 0:
                raise RuntimeError(f"mf data add {o['dataset']}: {up.stderr[-2000:]}")
        submitted = {}
        for o in orders:
            r = post(c, "/orders", errors, content=yaml.safe_dump(o["spec"]).encode(),
                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/yaml"})
            if r.status_code != 201:
                raise RuntimeError(f"order {o['spec']['name']}: HTTP {r.status_code} {r.text[:500]}")
            submitted[r.json()["order"]] = o["spec"]["name"]
    return submitted


def order_states(db) -> dict[int, str]:
    from sqlalchemy import text

    with db.connect() as c:
        return dict(c.execute(text("SELECT id, state FROM orders")).all())


def run_pass(name: str, base: Path, orders: list[dict], db_url: str | None, *, chaos: bool, seed: int,
             min_faults: int, timeout_s: float, gap: tuple[float, float]) -> dict:
    from sqlalchemy import create_engine

    from modelfactory.store import database_url

    deadline = time.monotonic() + timeout_s
    root = base / name
    home, tmp = root / "home", root / "tmp"
    tmp.mkdir(parents=True)
    admin = "mf-admin-" + secrets.token_hex(16)
    env = {**os.environ, **POOL_ENV, "MF_HOME": str(home), "TMPDIR": str(tmp), "MF_ADMIN_KEY": admin,
           "MF_MODEL_DIRS": str(base / "inputs" / "models")}
    for var in ("MF_SERVER", "MF_API_KEY", "MF_DATABASE_URL"):
        env.pop(var, None)
    if db_url:
        env["MF_DATABASE_URL"] = db_url
    url = database_url(db_url or f"sqlite:///{home / 'mf.db'}")
    server = Server(env, root / "server.log")
    monkey: Chaos | None = None
    http_errors: list[str] = []
    try:
        server.start()
        server.wait_ready(admin)
        db = create_engine(url)
        t0 = time.monotonic()
        submitted = submit(server, admin, env, orders, http_errors)
        monkey = Chaos(server, db, seed, admin, gap) if chaos else None
        if monkey:
            monkey.start()
        while time.monotonic() < deadline:
            server.track()
            try:
                states = {i: s for i, s in order_states(db).items() if i in submitted}
            except Exception:  # noqa: BLE001 - e.g. SQLite busy: look again
                states = {}
            done = all(states.get(i) in TERMINAL_ORDERS for i in submitted)
            if done and (monkey is None or len(monkey.faults) >= min_faults):
                break
            time.sleep(0.5)
        wall = time.monotonic() - t0
    finally:
        if monkey:
            monkey.halt.set()
            monkey.join(timeout=120)
        server.stop()
    time.sleep(10)  # what dies with its parent gets a moment to (PR_SET_PDEATHSIG, the job's own watchdog)
    server.track()
    out = {"wall_s": round(wall, 1), "server_starts": server.starts, "survivors": server.survivors(),
           "orphans_during_run": server.lingering(),
           "http_5xx": http_errors}
    out.update(outcome(db, submitted, home, tmp))
    if monkey:
        out["faults"] = monkey.faults
        out["chaos_errors"] = monkey.errors
    db.dispose()
    shutil.copy(root / "server.log", base / f"{name}.server.log")
    return out


def outcome(db, submitted: dict[int, str], home: Path, tmp: Path) -> dict:
    """What the database and the disk say after the pass."""
    from sqlalchemy import text

    with db.connect() as c:
        orders = {i: {"name": n} for i, n in submitted.items()}
        for i, state, error in c.execute(text("SELECT id, state, error FROM orders")):
            if i in orders:
                orders[i].update(state=state, error=error)
        rows = c.execute(text("SELECT name, metrics, artifact_id FROM model_versions")).all()
        models = {name: metrics if isinstance(metrics, dict) else json.loads(metrics) for name, metrics, _ in rows}
        files = {name: _files_hash(home / "artifacts" / artifact) for name, _, artifact in rows}
        jobs = {i: (attempts, state, name) for i, attempts, state, name in
                c.execute(text("SELECT id, attempts, state, name FROM jobs"))}
        billed: dict[tuple[int, int], list[str]] = {}
        for job_id, attempt, outcome_ in c.execute(text("SELECT job_id, attempt, outcome FROM usage")):
            billed.setdefault((job_id, attempt), []).append(outcome_)
    expected = {(j, a) for j, (attempts, _, _) in jobs.items() for a in range(1, attempts + 1)}
    double = {f"{k[0]}.{k[1]}": v for k, v in billed.items() if len(v) > 1}
    lost = sorted(f"{j}.{a}" for j, a in expected - set(billed))
    unknown = sorted(f"{j}.{a}" for j, a in set(billed) - expected)
    outcomes: dict[str, int] = {}
    for v in billed.values():
        for o in v:
            outcomes[o] = outcomes.get(o, 0) + 1
    artifacts = home / "artifacts"
    leftovers = [str(p.relative_to(home)) for p in artifacts.glob(".tmp-*")] if artifacts.exists() else []
    leftovers += [str(p.relative_to(home)) for p in home.rglob("*.tmp")]
    # workers' own temp dirs (artifacts.process_tmpdir): each names what is in it
    leftovers += [f"{p.relative_to(home)}: {sorted(os.listdir(p)) if p.is_dir() else ''}"
                  for p in (home / "tmp").iterdir()] if (home / "tmp").is_dir() else []
    work = home / "work"
    stale_work = [p.name for p in work.iterdir() if (artifacts / p.name).exists()] if work.exists() else []
    return {"orders": orders, "models": models, "model_files": files, "jobs": len(jobs),
            "job_states": _count(s for _, s, _ in jobs.values()),
            "retried": {n: a for a, _, n in jobs.values() if a > 1},
            "attempts": len(expected), "ledger_rows": sum(len(v) for v in billed.values()),
            "ledger_outcomes": outcomes, "double_billed": double, "unbilled": lost, "billed_unknown": unknown,
            "temp_leftovers": {"TMPDIR": sorted(os.listdir(tmp)), "MF_HOME": sorted(leftovers),
                               "work dirs of finished stages": sorted(stale_work)}}


def _files_hash(path: Path) -> str:
    """A registered model's files (the manifest aside, which records when it was made) as one hash."""
    from modelfactory.artifacts import file_hash

    return file_hash_list([(p.relative_to(path).as_posix(), file_hash(p)) for p in sorted(path.rglob("*"))
                           if p.is_file() and p.name != "manifest.json"])


def file_hash_list(items: list[tuple[str, str]]) -> str:
    from modelfactory.artifacts import content_hash

    return content_hash(items)


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# --- comparison and report ---------------------------------------------------------------------------------------
def flat(d: object, prefix: str = "") -> dict[str, object]:
    if isinstance(d, dict):
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def compared(reference: dict, chaos: dict, tolerance: float) -> dict:
    """Per model: the metrics that differ from the undisturbed run's (timings excluded)."""
    out = {}
    for name, ref in reference.items():
        got = chaos.get(name)
        if got is None:
            out[name] = {"missing": True}
            continue
        a, b = flat(ref), flat(got)
        keys = [k for k in a.keys() | b.keys() if not any(w in k.lower() for w in TIMING_WORDS)]
        diff = {}
        for k in sorted(keys):
            x, y = a.get(k), b.get(k)
            num = isinstance(x, (int, float)) and isinstance(y, (int, float))
            if (num and abs(x - y) > tolerance) or (not num and x != y):
                diff[k] = [x, y]
        out[name] = {"compared": len(keys), "differ": diff}
    return out


def summary(db: str, ref: dict, cha: dict, tolerance: float) -> dict:
    faults = cha.get("faults", [])
    by_kind = {k: sum(f["kind"] == k for f in faults) for k in KINDS}
    hit_stages: dict[str, int] = {}
    for f in faults:
        for name in f["running"]:
            stage = name.split("/", 1)[-1]
            hit_stages[stage] = hit_stages.get(stage, 0) + 1
    cmp = compared(ref["models"], cha["models"], tolerance)
    completed = [o for o in cha["orders"].values() if o.get("state") in ("done", "missed_targets")]
    return {
        "database": db, "faults": len(faults), "faults_by_kind": by_kind, "stages_running_at_faults": hit_stages,
        "faults_on_running_stages": sum(bool(f["running"]) for f in faults),
        "orders": len(cha["orders"]), "orders_completed": len(completed),
        "orders_not_completed": {o["name"]: f"{o.get('state')}: {(o.get('error') or '')[:300]}"
                                 for o in cha["orders"].values() if o not in completed},
        "reference_completed": sum(o.get("state") in ("done", "missed_targets") for o in ref["orders"].values()),
        "models_equal": sum(1 for v in cmp.values() if not v.get("missing") and not v["differ"]),
        "models_compared": len(cmp), "model_diffs": {k: v for k, v in cmp.items() if v.get("missing") or v["differ"]},
        "model_files_identical": sum(cha["model_files"].get(k) == h for k, h in ref["model_files"].items()),
        "attempts": cha["attempts"], "ledger_rows": cha["ledger_rows"],
        "billed_once": cha["attempts"] - len(cha["unbilled"]) - len(cha["double_billed"]),
        "unbilled": cha["unbilled"], "double_billed": cha["double_billed"], "billed_unknown": cha["billed_unknown"],
        "orphans": cha["survivors"], "orphans_during_run": cha["orphans_during_run"],
        "temp_leftovers": cha["temp_leftovers"],
        "temp_leftover_count": sum(len(v) for v in cha["temp_leftovers"].values()),
        "reference_wall_s": ref["wall_s"], "chaos_wall_s": cha["wall_s"], "server_starts": cha["server_starts"],
        "chaos_errors": cha.get("chaos_errors", []), "http_5xx": ref["http_5xx"] + cha["http_5xx"],
    }


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    m = results["meta"]
    lines = [
        "# Chaos on the compute pool", "",
        f"Measured {m['when']} by `bench/chaos.py` (seed {m['seed']}) on {m['machine']}: {m['orders']} orders "
        f"({m['text_orders']} text, {m['image_orders']} image) on `mf server` with 2 local workers (1 CPU each), "
        f"lease {LEASE_S} s, heartbeat {HEARTBEAT_S} s. Each database: one undisturbed pass, then the same orders "
        "again from an empty MF_HOME and database while a chaos loop injects faults, at least "
        f"{m['min_faults']} per pass and until every order has finished: each one {m['gap'][0]:g}-{m['gap'][1]:g} s "
        "(uniform, seeded) after the pool has recovered from the last (the server answers and a worker heartbeats), "
        f"its kind drawn with weights {dict(zip(KINDS, WEIGHTS))}: `worker_kill` = kill -9 of one of the "
        "server's workers (the server starts it again, at most once every "
        f"10 s); `server_kill` = kill -9 of `mf server` (its workers and their jobs die with it) and a restart on "
        f"the same port; `worker_pause` = SIGSTOP of a worker for {LEASE_S + 1}-{LEASE_S + 4} s (past its lease), "
        "then SIGCONT.", "",
        f"Metrics: every number in a registered model's metrics except timings (keys naming latency, time, "
        f"seconds, throughput) is compared with the undisturbed run's, tolerance {m['tolerance']:g}: "
        f"{m['why_tolerance']}",
        "",
        "Billing: every attempt in the jobs table (attempts 1..N of each job) must have exactly one row in the usage "
        "ledger, and the ledger no row for an attempt that never was. Orphans: any process ever seen below a "
        "server (workers, forkservers, job processes) still alive 10 s after the pass ended. Temp leftovers: "
        "entries in the pass's TMPDIR, `.tmp-*` artifact dirs, `*.tmp` files and workers' temp dirs (MF_HOME/tmp/*) "
        "under MF_HOME, and checkpoint dirs (MF_HOME/work/<key>) of stages whose artifact exists.", "",
        "| database | faults (worker kill / server kill / pause) | orders completed | models whose metrics equal "
        "the undisturbed run's (whose files are identical) "
        "| attempts billed exactly once | lost / double bills | orphans after the run (during it, > 30 s) "
        "| temp leftovers | wall (undisturbed / chaos) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        k = s["faults_by_kind"]
        lines.append(
            f"| {s['database']} | {s['faults']} ({k['worker_kill']} / {k['server_kill']} / {k['worker_pause']}) "
            f"| {s['orders_completed']}/{s['orders']} | {s['models_equal']}/{s['models_compared']} "
            f"({s['model_files_identical']}/{s['models_compared']}) "
            f"| {s['billed_once']}/{s['attempts']} | {len(s['unbilled'])} / {len(s['double_billed'])} "
            f"| {len(s['orphans'])} ({len(s['orphans_during_run'])}) | {s['temp_leftover_count']} "
            f"| {s['reference_wall_s']:.0f} s / {s['chaos_wall_s']:.0f} s |")
    for s in results["summary"]:
        lines += ["", f"## {s['database']}", "",
                  f"{s['faults_on_running_stages']} of the {s['faults']} faults landed while stage jobs ran (the "
                  "rest after the orders had finished, or between jobs). "
                  "Stages running when a fault landed (a fault counts once per running stage job): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s["stages_running_at_faults"].items())) + ".",
                  f"The server was started {s['server_starts']} times; the ledger holds {s['ledger_rows']} rows for "
                  f"{s['attempts']} attempts."]
        for key, what in (("orders_not_completed", "Orders not completed"), ("model_diffs", "Models that differ"),
                          ("unbilled", "Attempts with no ledger row"), ("double_billed", "Attempts billed twice"),
                          ("billed_unknown", "Ledger rows for no attempt"), ("orphans", "Orphan processes"),
                          ("orphans_during_run", "Processes that lived over 30 s without their parent during the run"),
                          ("chaos_errors", "Faults that could not be injected"),
                          ("http_5xx", "Server errors answered while setting up (retried)")):
            if s[key]:
                lines.append(f"- **{what}**: `{json.dumps(s[key], default=str)[:1500]}`")
        if s["temp_leftover_count"]:
            lines.append(f"- **Temp leftovers**: `{json.dumps(s['temp_leftovers'])[:1500]}`")
    lines += ["", results.get("notes", "")]
    (out / "chaos.md").write_text("\n".join(lines).rstrip() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--orders", type=int, default=2)
    ap.add_argument("--min-faults", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gap", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN_S", "MAX_S"))
    ap.add_argument("--budget", type=float, default=2250,
                    help="seconds for the whole run: the undisturbed pass may take 45%% of it, the chaos pass ends "
                         "(faults stop, what is unfinished is reported as such) 2 min before the end")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (logs, MF_HOMEs) for a post-mortem")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="only combine the chaos.json of runs made apart (e.g. one per database, run side by side)")
    ap.add_argument("--notes", type=Path, help="with --merge: a markdown file of findings to end the report with")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = {"meta": parts[0]["meta"] | {"command": " + ".join(p["meta"]["command"] for p in parts)},
                  "summary": [summary(db, run["undisturbed"], run["chaos"], TOLERANCE)
                              for p in parts for db, run in p["runs"].items()],
                  "runs": {k: v for p in parts for k, v in p["runs"].items()},
                  "notes": args.notes.read_text() if args.notes else NOTES}
        write(merged, args.out)
        return
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`: stop the servers and PostgreSQL on the way out
    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="mf-chaos-"))
    base.chmod(0o755)
    print(f"working in {base}", flush=True)
    pg = None
    try:
        orders = build_orders(base / "inputs", args.orders)
        dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
        summaries, raw = [], {}
        for i, dbname in enumerate(dbs):
            urls = [None, None]
            if dbname == "postgres":
                from tests import pg as pgmod

                pg = pgmod.start()
                urls = [pg.create_database(), pg.create_database()]
            share = (args.budget - (time.monotonic() - began)) / (len(dbs) - i)  # this database's time
            kw = {"seed": args.seed + i, "min_faults": args.min_faults, "gap": tuple(args.gap)}
            print(f"[{dbname}] undisturbed pass", flush=True)
            ref = run_pass(f"{dbname}-undisturbed", base, orders, urls[0], chaos=False, timeout_s=0.45 * share,
                           **kw)
            print(f"[{dbname}] undisturbed: {ref['wall_s']} s, orders "
                  f"{[o.get('state') for o in ref['orders'].values()]}", flush=True)
            print(f"[{dbname}] chaos pass", flush=True)
            left = args.budget - (time.monotonic() - began) - (len(dbs) - i - 1) * share
            cha = run_pass(f"{dbname}-chaos", base, orders, urls[1], chaos=True, timeout_s=left - 120, **kw)
            s = summary(dbname, ref, cha, TOLERANCE)
            summaries.append(s)
            raw[dbname] = {"undisturbed": ref, "chaos": cha}
            print(json.dumps({k: v for k, v in s.items() if k not in ("temp_leftovers",)}, default=str)[:3000],
                  flush=True)
            if pg is not None:
                pg.stop()
                pg = None
        meta = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "seed": args.seed,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "orders": len(orders), "text_orders": sum("text" in o["spec"]["name"] for o in orders),
                "image_orders": sum("image" in o["spec"]["name"] for o in orders), "gap": list(args.gap),
                "min_faults": args.min_faults, "tolerance": TOLERANCE, "why_tolerance": WHY_TOLERANCE,
                "command": " ".join(sys.argv)}
        write({"meta": meta, "summary": summaries, "runs": raw, "notes": NOTES}, args.out)
        print(f"wrote {args.out / 'chaos.md'}", flush=True)
    finally:
        if pg is not None:
            pg.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


TOLERANCE = 0.0
WHY_TOLERANCE = ("training is seeded and every job runs with one thread, and an attempt that resumes restores the "
                 "model, optimizer and RNG state from its checkpoint, so a stage computes the same numbers however "
                 "often it was interrupted: any difference is a bug, not noise.")
NOTES = ""

if __name__ == "__main__":
    main()
