"""The compute pool with real processes on the real database: workers (`mf worker`) and the server (`mf server`)
run as separate processes; a tiny text order trains a real (tiny) teacher as a stage job.

- kill -9 a worker mid-training: the job process dies with it, another worker resumes from the checkpoint,
  the ledger has both attempts;
- kill -9 the server (and so its worker) with jobs queued and running, start it again: nothing lost or
  duplicated, and the order ends registered as `mf order run` would register it;
- preemption: an urgent job preempts a batch training job, which checkpoints, is requeued and finishes from where
  it stopped.

Timings are shortened through the environment (lease 3 s, heartbeat 0.5 s)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from modelfactory import registry
from modelfactory.accounts.tables import Usage
from modelfactory.accounts.tenants import add_tenant
from modelfactory.artifacts import ArtifactStore
from modelfactory.cli import main
from modelfactory.compute import jobs
from modelfactory.compute.jobs import Spec
from modelfactory.compute.poolconfig import pool_config
from modelfactory.compute.scheduler import schedule_once
from modelfactory.compute.tables import Job, pool_read, pool_tx
from modelfactory.compute.worker import pid_alive
from modelfactory.factory.jobkinds import finalize_orders, order_status, plan_keys, run_order_job, submit_order
from modelfactory.factory.order import run_order
from modelfactory.factory.planner import Node, Plan
from modelfactory.factory.spec import parse_spec
from modelfactory.store import Order, session

from .conftest import REPO, sample_csv, tiny_order

pytestmark = pytest.mark.slow

TEACHER = {"epochs": 4, "batch_size": 4, "checkpoint_every": 5}  # ~70 steps of a few tens of ms


@pytest.fixture(autouse=True)
def fast_pool(monkeypatch):
    for k, v in {"MF_LEASE_TIMEOUT_S": "3", "MF_HEARTBEAT_S": "0.5", "MF_WORKER_POLL_S": "0.1",
                 "MF_SCHEDULE_INTERVAL_S": "0.2", "MF_PREEMPT_GRACE_S": "30", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def reviews_csv(tmp_path, corpus_df):
    return sample_csv(corpus_df, tmp_path / "reviews.csv", 40)


def wait_for(cond: Callable[[], object], what: str, timeout: float = 600, every: float = 0.1):
    """Poll until `cond()` is truthy; the timeout only guards against a hang (a loaded 2-core box is slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def mf_process(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "modelfactory.cli", *args], cwd=REPO, env=os.environ.copy(),
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def job(job_id: int) -> Job:
    with pool_read() as s:
        return s.get(Job, job_id)


def ledger(job_id: int) -> list[tuple[int, str, str]]:
    with pool_read() as s:
        return [(u.attempt, u.outcome, u.worker) for u in
                s.scalars(select(Usage).where(Usage.job_id == job_id).order_by(Usage.attempt))]


def reasons(job_id: int) -> list[str]:
    return [e.reason for e in jobs.events(job_id)]


def checkpoint_step(mf_home: Path, key: str) -> int:
    state = mf_home / "work" / key / "checkpoint" / "state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError):
        return 0


def job_pid(log: Path, job_id: int, attempt: int) -> int:
    m = re.search(rf"job {job_id} \(.*\): attempt {attempt} started, pid (\d+)", log.read_text())
    assert m, log.read_text()
    return int(m.group(1))


class SchedulerThread:
    """The scheduler loop of `mf server`, in this process (so a test can choose any registered policy)."""

    def __init__(self, policy: str = "fifo"):
        self.cfg = pool_config().with_(policy=policy)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                schedule_once(config=self.cfg)
                finalize_orders()
            except BaseException as e:  # noqa: BLE001 - surfaced by __exit__
                self.errors.append(e)
                return
            self.stop.wait(self.cfg.schedule_interval_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.errors, self.errors


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_kill9_worker_mid_training_resumes_on_another_worker(reviews_csv, tiny_teacher, tmp_path, mf_home):
    add_tenant("acme")
    sub = submit_order(parse_spec(tiny_order("pooled", reviews_csv, tiny_teacher, teacher=TEACHER)), tenant="acme")
    teacher, key = sub.jobs["teacher"], job(sub.jobs["teacher"]).key
    logs = {w: tmp_path / f"{w}.log" for w in ("wa", "wb")}
    procs = {w: mf_process("worker", "--id", w, "--cpu", "1", "--memory-gb", "4", log=logs[w]) for w in logs}
    try:
        with SchedulerThread():
            step = wait_for(lambda: job(teacher).state == "running" and checkpoint_step(mf_home, key),
                            "the teacher's first checkpoint")
            victim = job(teacher).lease_worker
            survivor = next(w for w in procs if w != victim)
            child = job_pid(logs[victim], teacher, 1)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            wait_for(lambda: not pid_alive(child), "the job process to die with its worker", timeout=60)

            done = wait_for(lambda: job(teacher).state == "succeeded" and job(teacher), "the teacher job")
        assert done.attempts == 2 and done.result["resumed_from_step"] >= step >= 5
        assert any(r.startswith(f"worker lost: {victim} sent no heartbeat") for r in reasons(teacher))
        assert reasons(teacher)[-1] == f"succeeded (resumed from step {done.result['resumed_from_step']})"
        assert ledger(teacher) == [(1, "lost", victim), (2, "succeeded", survivor)]
        assert f"job {teacher}: attempt 2 -> succeeded" in logs[survivor].read_text()
    finally:
        stop_all(list(procs.values()))


def test_server_restart_loses_nothing_and_the_order_is_registered_like_order_run(
        reviews_csv, tiny_teacher, tmp_path, mf_home, monkeypatch, capsys):
    monkeypatch.setenv("MF_LEASE_TIMEOUT_S", "60")  # only the restarted worker can take the lease back quickly
    add_tenant("acme")
    order_file = tmp_path / "order.yaml"
    small = {"optimize_onnx": False, "quantize": "none"}  # 12 stages, not 16: the same paths, sooner
    order_file.write_text(yaml.safe_dump(tiny_order("pooled", reviews_csv, tiny_teacher, teacher=TEACHER, **small)))
    monkeypatch.setattr(sys, "argv", ["mf", "order", "submit", str(order_file), "--tenant", "acme", "--json"])
    main()
    submitted = json.loads(capsys.readouterr().out)
    order_id, job_ids = submitted["order"], submitted["jobs"]
    assert submitted["cached"] == [] and len(job_ids) == 12
    teacher = job_ids["teacher"]
    key = job(teacher).key
    log = tmp_path / "server.log"

    server = mf_process("server", "--workers", "1", "--worker-cpu", "2", log=log)
    try:
        step = wait_for(lambda: job(teacher).state == "running" and checkpoint_step(mf_home, key),
                        "the teacher's first checkpoint")
        states = {n: job(i).state for n, i in job_ids.items()}
        assert states["split"] == "succeeded" and states["teacher"] == "running"
        # the baselines need no teacher: they may run beside it; everything else waits for it
        after_teacher = [n for n in states if n not in ("split", "teacher") and "baseline" not in n]
        assert len(after_teacher) == 7 and all(states[n] == "queued" for n in after_teacher)
        worker_pid = _worker_pid(job(teacher).lease_worker)
        child = job_pid(log, teacher, 1)
        server.send_signal(signal.SIGKILL)  # no goodbye: its worker and the job process die with it
        server.wait()
        wait_for(lambda: not pid_alive(worker_pid) and not pid_alive(child), "the worker and job to die", timeout=60)
        assert job(teacher).state == "running"  # as far as the database knows

        server = mf_process("server", "--workers", "1", "--worker-cpu", "2", log=log)
        wait_for(lambda: _order_state(order_id) != "running", "the order to finish", timeout=600, every=0.5)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    assert _order_state(order_id) == "done"
    monkeypatch.setattr(sys, "argv", ["mf", "order", "status", str(order_id), "--json"])
    main()
    status = json.loads(capsys.readouterr().out)
    assert (status["state"], status["on_pool"], len(status["nodes"])) == ("done", True, 12)
    assert {n["node"]: n["state"] for n in status["nodes"]} == {n: "succeeded" for n in job_ids}
    assert next(n for n in status["nodes"] if n["node"] == "teacher")["resumed_from_step"] >= step
    all_jobs = jobs.list_jobs(order_id=order_id)
    assert sorted(j["id"] for j in all_jobs) == sorted(job_ids.values())  # nothing duplicated
    assert all(j["state"] == "succeeded" for j in all_jobs)  # nothing lost
    retried = {j["name"].split("/")[1]: j["attempts"] for j in all_jobs if j["attempts"] != 1}
    # the teacher was running when the server died; a baseline may have been running beside it (it needs no teacher)
    assert retried.pop("teacher") == 2 and set(retried) <= {"baseline_classical", "evaluate_baseline_majority",
                                                             "evaluate_baseline_classical"}
    assert all(n == 2 for n in retried.values())
    attempts = sum(j["attempts"] for j in all_jobs)
    t = job(teacher)
    assert t.result["resumed_from_step"] >= step
    # the restarted worker took its predecessor's lease back at once (the lease itself had a minute to run)
    assert any(r.startswith("worker lost: ") and " restarted " in r for r in reasons(teacher))
    assert [(a, o) for a, o, _ in ledger(teacher)] == [(1, "lost"), (2, "succeeded")]
    with pool_read() as s:
        rows = s.scalars(select(Usage).where(Usage.order_id == order_id)).all()
    assert len(rows) == attempts and len({(u.job_id, u.attempt) for u in rows}) == attempts  # one bill an attempt

    # Registered as `mf order run` registers: running the same order in-process is all cache hits and lands on
    # the same model version.
    ref = registry.resolve("pooled")
    assert (ref.version, ref.aliases, ref.tenant) == (1, ["latest", "prod"], "acme")
    assert ref.lineage["teacher"] == t.result["artifact"] and ref.lineage["order"] == order_id
    report = (mf_home / "orders" / str(order_id) / "report.md").read_text()
    assert f"resumed from step {t.result['resumed_from_step']}" in report
    again = run_order(parse_spec(tiny_order("pooled", reviews_csv, tiny_teacher, teacher=TEACHER, tenant="acme",
                                            **small)))
    assert all(r.cached for r in again.results.values())
    assert again.model.version == 1 and registry.resolve("pooled").version == 1
    assert again.metrics == {k: ref.metrics[k] for k in again.metrics}


def _worker_pid(worker_id: str) -> int:
    from modelfactory.compute.tables import Worker

    with pool_read() as s:
        return s.get(Worker, worker_id).pid


def _order_state(order_id: int) -> str:
    with session() as s:
        return s.get(Order, order_id).state


# --- preemption ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["priority"])
def test_urgent_job_preempts_a_batch_training_job_which_resumes_from_its_checkpoint(
        policy, reviews_csv, tiny_teacher, tmp_path, monkeypatch, request):
    monkeypatch.setenv("MF_PREEMPT_MIN_RUNTIME_S", "0")  # the policy's min_runtime: preempt at once
    # MF_HOME where a tenant's uid can reach it (the sandbox runs commands as one when we are root): pytest's
    # temporary folders are 0700.
    mf_home = Path(tempfile.mkdtemp(prefix="mf-pool-"))
    mf_home.chmod(0o711)
    mf_home = mf_home / "home"
    monkeypatch.setenv("MF_HOME", str(mf_home))
    request.addfinalizer(lambda: shutil.rmtree(mf_home.parent, ignore_errors=True))
    add_tenant("acme")
    spec = parse_spec(tiny_order("batchy", reviews_csv, tiny_teacher, teacher=TEACHER))
    sub = submit_order(spec, tenant="acme", priority="batch")
    teacher, key = sub.jobs["teacher"], job(sub.jobs["teacher"]).key
    log = tmp_path / "worker.log"
    worker = mf_process("worker", "--id", "solo", "--cpu", "1", "--memory-gb", "4", log=log)
    try:
        with SchedulerThread(policy):
            wait_for(lambda: job(teacher).state == "running" and checkpoint_step(mf_home, key) >= 5,
                     "the batch teacher's first checkpoint")
            urgent = jobs.submit("acme", _split_job(sub.dataset.artifact_id, seed=1, priority="urgent"))
            wait_for(lambda: job(urgent).state == "succeeded", "the urgent job")
            done = wait_for(lambda: job(teacher).state == "succeeded" and job(teacher), "the batch teacher")
            # A command job (a tenant renting the pool) goes through the same worker, into the tenant's sandbox.
            argv = ["sh", "-c", 'echo hello; echo result > "$MF_OUTPUT_DIR/out.txt"; '
                                'ln -s /etc/passwd "$MF_OUTPUT_DIR/leak"']  # a link out is never collected
            command = jobs.submit("acme", jobs.command_spec(argv, priority="urgent", time_limit_s=60))
            ran = wait_for(lambda: job(command).state in ("succeeded", "failed") and job(command), "the command")
    finally:
        stop_all([worker])
    assert ran.state == "succeeded" and ran.result["exit_code"] == 0, ran.last_error
    assert Path(ran.result["stdout"]).read_text() == "hello\n"
    assert (Path(ran.result["outputs"]) / "out.txt").read_text() == "result\n"
    collected = ArtifactStore().get(ran.result["artifact"])  # the outputs, kept as the job's artifact
    assert (collected.kind, (collected.path / "out.txt").read_text()) == ("job-outputs", "result\n")
    assert collected.manifest["params"] == {"tenant": "acme", "job": command}
    assert not (collected.path / "leak").exists() and collected.metrics["files"] == 1
    assert [(a, o) for a, o, _ in ledger(command)] == [(1, "succeeded")]
    history = reasons(teacher)
    assert f"preemption requested by the '{policy}' policy" in history
    stopped = next(r for r in history if r.startswith("preempted: checkpointed at step"))
    at_step = int(stopped.rsplit(" ", 1)[1])
    assert done.attempts == 2 and done.result["resumed_from_step"] == at_step > 0
    assert history[-1] == f"succeeded (resumed from step {at_step})"
    assert [(a, o) for a, o, _ in ledger(teacher)] == [(1, "preempted"), (2, "succeeded")]
    requeued = next(e.at for e in jobs.events(teacher) if e.reason == stopped)
    assert job(urgent).started >= requeued  # the urgent job ran in the slot the batch job gave back


def _split_job(dataset_artifact: str, seed: int, priority: str) -> Spec:
    """A stage job outside any order: the split of a dataset with its own seed (so not a cache hit)."""
    node = Node("split", "split", {"val": 0.15, "test": 0.2, "seed": seed, "max_rows": None},
                {"dataset": f"@{dataset_artifact}"})
    key, ids = plan_keys(Plan([node], {}, "split"))["split"]
    return Spec(kind="stage", name=f"split-seed{seed}", key=key, priority=priority,
                payload={"node": "split", "stage": "split", "params": node.params, "inputs": ids, "key": key})


# --- GPUs ------------------------------------------------------------------------------------------------------
def test_each_job_sees_only_the_gpus_it_was_given(tmp_path, monkeypatch, request):
    """A worker advertising 2 GPUs gives two concurrent 1-GPU jobs one device each (CUDA_VISIBLE_DEVICES), and a
    CPU-only job none; the devices are free again once the jobs end."""
    mf_home = Path(tempfile.mkdtemp(prefix="mf-pool-"))  # reachable by the tenant's uid (see the test above)
    mf_home.chmod(0o711)
    monkeypatch.setenv("MF_HOME", str(mf_home / "home"))
    request.addfinalizer(lambda: shutil.rmtree(mf_home, ignore_errors=True))
    add_tenant("acme")
    show = ["sh", "-c", 'echo "gpus=[$CUDA_VISIBLE_DEVICES]"; sleep 2']
    ids = [jobs.submit("acme", jobs.command_spec(show, gpu=g, time_limit_s=60)) for g in (1, 1, 0, 1)]
    worker = mf_process("worker", "--id", "gpu-box", "--cpu", "4", "--gpu", "2", "--memory-gb", "4",
                        log=tmp_path / "worker.log")
    try:
        with SchedulerThread():
            done = [wait_for(lambda i=i: job(i).state in ("succeeded", "failed") and job(i), f"job {i}")
                    for i in ids]
    finally:
        stop_all([worker])
    seen = [Path(d.result["stdout"]).read_text().strip() for d in done]
    assert all(d.state == "succeeded" for d in done), [d.last_error for d in done]
    assert sorted(seen[:2]) == ["gpus=[0]", "gpus=[1]"]  # the first two ran together, on different devices
    assert seen[2] == "gpus=[]"  # asked for none, sees none
    assert seen[3] in ("gpus=[0]", "gpus=[1]")  # ran after one of them freed its device


def test_a_search_order_runs_its_trials_as_one_job_after_a_preempted_teacher(reviews_csv, tiny_teacher, tmp_path,
                                                                            mf_home):
    """An order with `search:` queues its teacher half as ordinary stage jobs and one job for the trials (which
    stages those run is only known as the search runs), which waits for them. The teacher, preempted mid-training,
    checkpoints, is requeued and resumes; the trials' job then runs once, on a cached teacher, and the order ends
    registered with its Pareto plot, as `mf order run` would leave it."""
    add_tenant("acme")
    spec = parse_spec(tiny_order("searched", reviews_csv, tiny_teacher, teacher=TEACHER,
                                 search={"max_trials": 2, "max_minutes": 10, "space": {"layers": [1, 2],
                                                                                      "vocab": ["train"]}}))
    sub = submit_order(spec, tenant="acme")
    search_job, teacher_job = sub.jobs["search"], sub.jobs["teacher"]
    assert {"split", "teacher", "export_teacher", "evaluate_teacher"} <= set(sub.jobs)
    assert set(job(search_job).depends_on) == {j for n, j in sub.jobs.items() if n != "search"}
    log = tmp_path / "worker.log"
    worker = mf_process("worker", "--id", "solo", "--cpu", "1", "--memory-gb", "4", log=log)
    try:
        with SchedulerThread():
            teacher_key = wait_for(lambda: job(teacher_job).state == "running" and job(teacher_job).key,
                                   "the teacher stage job to start")
            wait_for(lambda: checkpoint_step(mf_home, teacher_key) >= 5, "the teacher's first checkpoint")
            with pool_tx() as s:  # what a policy does when it preempts
                s.get(Job, teacher_job).preempt_requested = True
            wait_for(lambda: job(teacher_job).attempts == 2, "the teacher's second attempt", timeout=600)
            done = wait_for(lambda: job(search_job).state in ("succeeded", "failed") and job(search_job),
                            "the search job", timeout=600)
            wait_for(lambda: _order_state(sub.order_id) != "running", "the order to close")
    finally:
        stop_all([worker])
    assert done.state == "succeeded", done.last_error
    assert [(a, o) for a, o, _ in ledger(teacher_job)] == [(1, "preempted"), (2, "succeeded")]
    assert job(teacher_job).result["resumed_from_step"] >= 5
    assert [(a, o) for a, o, _ in ledger(search_job)] == [(1, "succeeded")]
    status = order_status(sub.order_id)
    assert status["state"] in ("done", "missed_targets")
    assert [n["node"] for n in status["nodes"]].count("teacher") == 1  # its job's row, not a second run's
    assert any(n["node"].startswith("trial1/") for n in status["nodes"])  # the search's second trial ran
    report = Path(status["report"])
    assert "## Recipe search" in report.read_text() and (report.parent / "pareto.png").is_file()
    assert registry.by_order([sub.order_id]) == {sub.order_id: "searched@1"}


@pytest.mark.parametrize("search_first", [False, True])
def test_a_search_order_and_a_recipe_order_on_one_teacher_queue_one_teacher_job(reviews_csv, tiny_teacher,
                                                                                 search_first, mf_home):
    """Submitted together, a search order and a fixed-recipe order on the same data and teacher share one
    fine-tune, whichever comes first (before, the search job trained its own copy inside its process)."""
    add_tenant("acme")
    search = parse_spec(tiny_order("searched", reviews_csv, tiny_teacher,
                                   search={"max_trials": 1, "max_minutes": 5, "space": {"layers": [1]}}))
    recipe = parse_spec(tiny_order("fixed", reviews_csv, tiny_teacher))
    first, second = (search, recipe) if search_first else (recipe, search)
    a, b = submit_order(first, tenant="acme"), submit_order(second, tenant="acme")
    assert {"split", "teacher", "export_teacher"} <= set(b.shared)
    assert a.jobs["teacher"] == b.jobs["teacher"]
    with pool_read() as s:
        teacher_key = s.get(Job, a.jobs["teacher"]).key
        assert len(list(s.scalars(select(Job).where(Job.key == teacher_key)))) == 1
        search_job = s.get(Job, (a if search_first else b).jobs["search"])
        assert a.jobs["teacher"] in search_job.depends_on


def test_a_failed_search_attempt_leaves_the_order_open_for_the_retry(reviews_csv, tiny_teacher, tmp_path, mf_home):
    """One failed attempt of a search job does not close its order as failed (the pool retries the job, and
    closes the order only when the job fails for good); before, the order read 'failed' while its retry ran, and
    a retry that finished it left the first attempt's error on a 'done' order."""
    add_tenant("acme")
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    spec = parse_spec(tiny_order("searched", reviews_csv, teacher,
                                 search={"max_trials": 1, "max_minutes": 5, "space": {"layers": [1]}}))
    sub = submit_order(spec, tenant="acme")
    shutil.rmtree(teacher)  # this attempt cannot fine-tune its teacher: it fails
    with pytest.raises(Exception):  # noqa: B017 (whatever a missing model dir raises)
        run_order_job(job(sub.jobs["search"]).payload, order_id=sub.order_id, should_stop=lambda: False)
    assert _order_state(sub.order_id) == "running"
    with pool_tx() as s:  # the job's last attempt failed: the pool closes the order with the job's error
        j = s.get(Job, sub.jobs["search"])
        j.state, j.last_error = "failed", "the teacher dir is gone"
    assert finalize_orders(order_ids=[sub.order_id]) == [sub.order_id]
    with session() as s:
        order = s.get(Order, sub.order_id)
        assert order.state == "failed"
        assert order.error == f"job {sub.jobs['search']} (searched/search) failed: the teacher dir is gone"


def test_a_causal_lm_order_runs_on_the_pool_like_any_other(corpus_df, tmp_path, mf_home):
    """A generative order's stages (split, LoRA adapter, base and adapter evaluation) are ordinary stage jobs."""
    from modelfactory.tasks.lm_base import build_base

    base = tmp_path / "tiny-llama"
    build_base(corpus_df["text"].head(1000).tolist(), base, size="tiny", vocab_size=600)
    rows = [{"messages": [{"role": "user", "content": r.text[:120]},
                          {"role": "assistant", "content": f"This review is {r.label}."}]}
            for r in corpus_df.sample(120, random_state=0).itertuples()]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    add_tenant("acme")
    spec = parse_spec({"name": "pooled-chat", "task": "causal-lm", "data": {"path": str(data), "truncate": True},
                       "teacher": {"model": str(base), "epochs": 1, "lr": 3e-3, "batch_size": 8,
                                   "max_length": 128, "lora": {"r": 4}}})
    sub = submit_order(spec, tenant="acme")
    assert set(sub.jobs) == {"split", "teacher", "evaluate_base", "evaluate_adapter"}
    log = tmp_path / "worker.log"
    worker = mf_process("worker", "--id", "solo", "--cpu", "1", "--memory-gb", "4", log=log)
    try:
        with SchedulerThread():
            wait_for(lambda: _order_state(sub.order_id) != "running", "the order to close", timeout=600)
    finally:
        stop_all([worker])
    assert _order_state(sub.order_id) == "done", log.read_text()[-3000:]
    ref = registry.resolve("pooled-chat")
    assert ref.task == "causal-lm" and (ref.path / "adapter_model.safetensors").is_file()
    assert ref.metrics["adapter"]["perplexity"] < ref.metrics["base"]["perplexity"]
    assert {j["name"] for j in jobs.list_jobs(order_id=sub.order_id)} == {f"pooled-chat/{n}" for n in sub.jobs}
