"""The factory at volume: 20 orders over three corpora that ship offline (two text, one image), two tenants with
different weights and one `urgent` order, submitted at once to a real `mf server` with local `mf worker`s, from an
empty MF_HOME, unattended. Writes bench/results/factory[_quick|_pg|_ray].{json,md} and a timeline plot.

It talks to the control plane over its REST API only (modelfactory.api.client), as a user would: create the
tenants, upload each corpus as a tenant's dataset, submit every order, poll until all are closed. Afterwards it
reads the pool's tables (jobs, stage runs) and the usage ledger (through the API) for the figures; see
bench/factory_report.py for what each figure means.

    .venv/bin/python bench/factory.py [--quick] [--database sqlite|postgres] [--executor local|ray] [--workers 2]

`--database postgres` starts a throwaway PostgreSQL cluster the way the tests do (tests/pg.py) and stops it at the
end. `--executor ray` runs the workers' jobs as Ray tasks (MF_EXECUTOR=ray) on a Ray cluster of two 1-CPU nodes on
this machine (`ray.cluster_utils.Cluster`, as tests/test_ray_cluster.py) and shuts it down at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import factory_orders  # noqa: E402  (bench/ is not a package)
import factory_report  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MF = [sys.executable, "-m", "modelfactory.cli"]  # from the code snapshot (see snapshot())
CLOSED = {"done", "missed_targets", "failed", "infeasible", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """The processes this run started (server, workers, Ray nodes, PostgreSQL), stopped in reverse order."""

    env: dict[str, str]
    url: str
    admin_key: str
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    cluster: object | None = None  # a ray.cluster_utils.Cluster this run started
    pg: object | None = None

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # the server and workers checkpoint and stop on Ctrl-C
        deadline = time.monotonic() + 60
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.cluster is not None:
            self.cluster.shutdown()  # its raylets, GCS and their workers (only this cluster's)
        if self.pg is not None:
            self.pg.stop()


def snapshot(folder: Path) -> Path:
    """The committed package (`git archive HEAD`), which the server, workers and job processes import instead of
    the working tree: a job process started late in an hour-long run must run the same code as the worker that
    started it, whatever is edited meanwhile (a shared working tree killed a run that way)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "modelfactory"], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def start_stack(home: Path, args: argparse.Namespace) -> Stack:
    admin = secrets.token_urlsafe(24)
    code = snapshot(home.parent / "code")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MF_", "RAY_"))}
    env |= {"MF_HOME": str(home), "MF_ADMIN_KEY": admin, "HF_HUB_OFFLINE": "1", "MF_POOL_POLICY": "fair",
            "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(code)}
    logs = home.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stack = Stack(env, f"http://127.0.0.1:{port}", admin, logs)
    try:
        if args.database == "postgres":
            from tests import pg

            stack.pg = pg.start()
            env["MF_DATABASE_URL"] = stack.pg.create_database()
        if args.executor == "ray":
            start_ray(stack)
        stack.procs.append(spawn([*MF, "server", "--workers", "0", "--policy", "fair", "--port", str(port)],
                                 env, logs / "server.log"))
        wait_ready(stack)
        for i in range(args.workers):
            stack.procs.append(spawn([*MF, "worker", "--cpu", "1", "--memory-gb", str(args.worker_memory_gb),
                                      "--id", f"bench-w{i + 1}"], env, logs / f"worker{i + 1}.log"))
    except BaseException:
        stack.stop()
        raise
    return stack


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=env["PYTHONPATH"])  # not the working tree: `-m` puts the cwd first on sys.path


def start_ray(stack: Stack) -> None:
    """A Ray cluster of two 1-CPU nodes on this machine (each its own raylet; the head has no CPUs), as
    tests/test_ray_cluster.py starts it: the workers' jobs run as Ray tasks on those two nodes."""
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = stack.env["PYTHONPATH"]  # the raylets' task processes import the snapshot too
    stack.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                                  "object_store_memory": 100 * 2**20})
    for _ in range(2):
        stack.cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    stack.cluster.wait_for_nodes()
    stack.env |= {"MF_EXECUTOR": "ray", "RAY_ADDRESS": stack.cluster.address}


def wait_ready(stack: Stack, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.procs[-1].poll() is not None:
            raise SystemExit(f"mf server exited {stack.procs[-1].returncode}: see {stack.logs / 'server.log'}")
        try:
            r = httpx.get(f"{stack.url}/api/v1/me", headers={"Authorization": f"Bearer {stack.admin_key}"},
                          timeout=5)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit(f"mf server did not answer within {timeout_s:.0f} s")


def corpus_file(c: factory_orders.Corpus, folder: Path) -> Path:
    """The built-in corpus as a file a user would upload: a CSV (text) or a .tar.gz of class folders (images)."""
    import pandas as pd

    from modelfactory.data import builtin

    table = builtin.corpus(c.corpus).table()
    if c.task == "text-classification":
        path = folder / f"{c.dataset}.csv"
        pd.DataFrame([{"text": r["text"], "label": r["label"]} for r in table.rows]).to_csv(path, index=False)
        return path
    path = folder / f"{c.dataset}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i, r in enumerate(table.rows):
            info = tarfile.TarInfo(f"{r['label']}/{i:05d}.png")
            info.size = len(r["image"])
            tar.addfile(info, io.BytesIO(r["image"]))
    return path


def run(args: argparse.Namespace) -> dict:
    import yaml

    from modelfactory.api.client import ControlPlane

    work = Path(tempfile.mkdtemp(prefix="mf-factory-bench-"))
    home = work / "home"  # empty: nothing cached, no tenants, no datasets
    specs = factory_orders.orders(args.quick, args.sizes)
    stack = start_stack(home, args)
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("MF_")})  # for reading the tables after
    try:
        admin = ControlPlane(stack.url, stack.admin_key, timeout=120)
        keys = {}
        for name, weight in factory_orders.TENANTS.items():
            made = admin.json("POST", "/tenants", json={"name": name, "weight": weight,
                                                         "urgent": name == factory_orders.URGENT_TENANT})
            keys[name] = ControlPlane(stack.url, made["api_key"], timeout=600)
        uploads = {}
        for c in factory_orders.corpora(args.quick):
            t = time.monotonic()
            up = keys[c.tenant].upload_dataset(c.dataset, corpus_file(c, work))
            uploads[c.dataset] = {"corpus": c.corpus, "tenant": c.tenant, "rows": up["rows"],
                                  "upload_s": round(time.monotonic() - t, 1)}
            print(f"uploaded {c.corpus} as {c.tenant}'s '{c.dataset}': {up['rows']} rows", flush=True)
        load = factory_report.LoadSampler()
        t0 = time.time()
        submitted = []
        for spec, priority in specs:
            sub = keys[spec["tenant"]].submit_order(yaml.safe_dump(spec), priority=priority)
            submitted.append({"order": sub["order"], "name": spec["name"], "tenant": spec["tenant"],
                              "priority": priority, "jobs": len(sub["jobs"]), "shared": sub["shared"],
                              "cached": sub["cached"]})
            print(f"order {sub['order']} {spec['name']} ({spec['tenant']}, {priority}): {len(sub['jobs'])} jobs, "
                  f"shared {sub['shared']}", flush=True)
        submit_s = time.time() - t0
        states = poll(admin, [s["order"] for s in submitted], load, deadline=t0 + args.timeout)
        wall = time.time() - t0
        usage = {t: admin.usage(tenant=t) for t in factory_orders.TENANTS}
        models = {}
        for o in states.values():
            if o.get("model"):
                models[o["order"]] = admin.model(o["model"])
        admin.close()
        tables = factory_report.read_tables([s["order"] for s in submitted])
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    data = factory_report.Collected(specs=specs, submitted=submitted, states=states, usage=usage, models=models,
                                    tables=tables,
                                    uploads=uploads, t0=t0, wall_s=wall, submit_s=submit_s, load=load.summary(),
                                    weights=factory_orders.TENANTS)
    dump = Path(tempfile.gettempdir()) / f"mf-factory-bench-{int(t0)}.json"  # to re-analyse (--from-collected)
    dump.write_text(json.dumps(dataclasses.asdict(data), default=str))
    print(f"collected figures: {dump}", flush=True)
    return report(data, args)


def report(data: factory_report.Collected, args: argparse.Namespace) -> dict:
    result = factory_report.analyse(data)
    if args.note:
        result["note"] = args.note
    result["setup"] = {"quick": args.quick, "database": args.database, "executor": args.executor,
                       "workers": args.workers, "worker_cpu": 1, "policy": "fair", "cpus": os.cpu_count(),
                       "sizes": factory_report.asdict_sizes(args.sizes or ("quick" if args.quick else "full"))}
    return result


def poll(admin, order_ids: list[int], load, *, deadline: float, every_s: float = 10.0) -> dict[int, dict]:
    """Every order's state until all are closed or the deadline passes (then the open ones are reported open)."""
    states: dict[int, dict] = {}
    last = ""
    while True:
        load.sample()
        for oid in order_ids:
            if states.get(oid, {}).get("state") not in CLOSED:
                states[oid] = admin.order(oid)
        counts: dict[str, int] = {}
        for o in states.values():
            counts[o["state"]] = counts.get(o["state"], 0) + 1
        line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if line != last:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        if all(o["state"] in CLOSED for o in states.values()) or time.time() > deadline:
            # once more: a search order's failed attempt can close it as failed before its retry finishes it
            return {oid: admin.order(oid) for oid in order_ids}
        time.sleep(every_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three orders on small cuts: checks the script end to end")
    ap.add_argument("--sizes", choices=["full", "small", "quick"], help="the orders' cuts (default: quick with "
                    "--quick, else full; small: all 20 orders on smaller cuts)")
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--workers", type=int, default=2, help="`mf worker` processes, one CPU each")
    ap.add_argument("--worker-memory-gb", type=float, default=6.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every order to close")
    ap.add_argument("--keep", action="store_true", help="keep MF_HOME (its path goes in the JSON)")
    ap.add_argument("--from-collected", help="write the report again from the figures a run saved (its JSON)")
    ap.add_argument("--note", help="a paragraph for the top of the report (e.g. why a run is incomplete)")
    ap.add_argument("--name", help="results name (default: factory, factory_quick, factory_pg, factory_ray)")
    args = ap.parse_args()
    name = args.name or "factory" + ("_quick" if args.quick else "") + (
        f"_{args.sizes}" if args.sizes and not args.quick else "") + (
        "_pg" if args.database == "postgres" else "") + ("_ray" if args.executor == "ray" else "")
    if args.from_collected:
        raw = json.loads(Path(args.from_collected).read_text())
        raw["states"] = {int(k): v for k, v in raw["states"].items()}
        raw["models"] = {int(k): v for k, v in raw["models"].items()}
        raw["specs"] = [tuple(x) for x in raw["specs"]]
        result = report(factory_report.Collected(**raw), args)
    else:
        result = run(args)
    RESULTS.mkdir(exist_ok=True)
    factory_report.write(result, RESULTS, name)
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
