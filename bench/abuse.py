"""Abuse bench (issue 17): attacks against live servers, each with the answer it must get.

Three servers run as their own processes, as an operator starts them, on a throwaway MF_HOME:
- the control plane (`mf server --workers 0`): order specs (billion laughs, deep JSON, absurd numbers), uploads
  (a gzip bomb, an over-long field, a header that is not UTF-8, a zip of many small members, thousands of bad
  rows), a chunked body past the upload limit, 'urgent' without the grant, minting keys past the cap,
  guessing keys, another tenant's dataset name;
- `mf serve --auth` (OIP v2) on a tiny image model: chunked and gzip-bomb bodies, a load config past the
  operator's maxima, an image whose header claims 10^10 pixels, /metrics with a tenant key, another tenant's model,
  guessing keys;
- `mf serve-llm --auth` on a tiny random Llama with two look-alike adapters (`acme.bot` of acme, `acme_bot` of
  globex): each tenant must be answered by its own adapter; a chunked body; /metrics with a tenant key.
Plus the start-up refusal: `mf serve` / `mf serve-llm` on 0.0.0.0 without --auth.
- a worker (`mf server --workers 1`, started with the platform's secrets in its environment) running tenant
  commands that look for MF_ADMIN_KEY and those secrets, read the database, the artifact store and another
  tenant's job dir, connect to the control plane's port, fork-bomb, allocate and write past their limits, leave a
  setsid child and get cancelled; and stage jobs (a bench job kind) over their memory and time limits, then one
  more job on the same worker.

After every attack: is the server process still the same one, does a follow-up request succeed (health), and
its memory high-water mark (VmHWM from /proc). Key guessing comes from its own loopback address (127.0.0.2/3),
so the rate limit it trips does not lock the bench's other requests out.

    python bench/abuse.py                 # writes bench/results/abuse.md and abuse.json
    python bench/abuse.py --only worker   # one server's attacks (a trial run: writes nothing)

The same attacks, and more of each, are tests: tests/test_sandbox.py, tests/test_sandbox_stage.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ADMIN = "mfk_abuse-bench-admin-key"
LIMITS = {"MF_MAX_TABLE_MB": "256", "MF_UPLOAD_MAX_MB": "64", "MF_MAX_KEYS_PER_TENANT": "20",
          "MF_AUTH_MAX_FAILURES": "20"}
RESULTS_ROWS: list[dict] = []


# --- plumbing ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Server:
    def __init__(self, name: str, args: list[str], health: str, env: dict, log: Path):
        self.name, self.health, self.log = name, health, log
        self.also_healthy = None  # e.g. the control plane's worker is still up
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logf = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "modelfactory.cli", *args, "--port", str(self.port)],
                                     cwd=REPO, env=env, stdout=self.logf, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.time() + 600
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({self.proc.returncode}); see {log}")
            if time.time() > deadline:
                raise RuntimeError(f"{name} did not become ready; see {log}")
            time.sleep(0.5)
        self.baseline_mb = (proc_kb(self.pid, "VmRSS") or 0) / 1024

    def healthy(self) -> bool:
        try:
            ok = httpx.get(self.url + self.health, timeout=30).status_code == 200
        except httpx.HTTPError:
            return False
        return ok and (self.also_healthy is None or self.also_healthy())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def attack(server: Server, name: str, expected: str, fn) -> None:
    """Run one attack: fn() -> (observed, as expected?). Then: same process alive, health answers, memory."""
    started = time.perf_counter()
    try:
        observed, ok = fn()
    except Exception as e:  # noqa: BLE001 - the bench records what happened, whatever it was
        observed, ok = f"client error: {type(e).__name__}: {str(e)[:200]}", False
    seconds = time.perf_counter() - started
    alive = server.proc.poll() is None
    healthy = alive and server.healthy()
    row = {"server": server.name, "attack": name, "expected": expected, "observed": str(observed)[:300],
           "as_expected": bool(ok), "still_healthy": healthy, "same_process": alive,
           "rss_hwm_mb": round((proc_kb(server.pid, "VmHWM") or 0) / 1024, 1),
           "rss_now_mb": round((proc_kb(server.pid, "VmRSS") or 0) / 1024, 1), "seconds": round(seconds, 2)}
    RESULTS_ROWS.append(row)
    print(f"[{server.name}] {name}: {'OK ' if ok and healthy else 'BAD'} {row['observed'][:120]} "
          f"(hwm {row['rss_hwm_mb']} MB)", flush=True)


def answer(r: httpx.Response) -> str:
    try:
        body = r.json()
        msg = body.get("error") if isinstance(body, dict) else body
        if isinstance(msg, dict):
            msg = msg.get("message")
    except ValueError:
        msg = r.text
    return f"{r.status_code} {str(msg)[:200]}"


def client(url: str, key: str | None = None, source: str | None = None, timeout: float = 300) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=timeout,
                        transport=transport)


def chunks(total: int, size: int = 1 << 20):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


# --- the attacks' payloads ------------------------------------------------------------------------------------
def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    body = "\n".join("  " + ln for ln in lines)
    return (f"name: bomb\ntask: text-classification\ndata: {{dataset: x}}\nteacher: {{model: t}}\n"
            f"search:\n  space:\n    layers: *a{levels - 1}\n  x:\n{body}\n")


def gz_field_bomb(mib: int) -> bytes:
    """A .csv.gz whose second row is one field of `mib` MiB."""
    buf = io.BytesIO()
    chunk = b"a" * (1 << 20)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as f:
        f.write(b"text,label\nfine,pos\n")
        for _ in range(mib):
            f.write(chunk)
        f.write(b",neg\n")
    return buf.getvalue()


def small_member_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(256):
            zf.writestr(f"cats/{i}.png", b"\x00" * ((1 << 20) - 1))
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# --- setup: tenants, a tiny image model, a tiny Llama with look-alike adapters --------------------------------
def digits_onnx(work: Path) -> Path:
    """A scratch ResNet on 40 real 8x8 digits, exported to ONNX in `work/digits-onnx` as the serving tests build
    theirs: a real image model that trains and loads in seconds (bench/load.py serves it too)."""
    import pandas as pd

    from modelfactory import tasks
    from modelfactory.data import builtin

    rows = pd.DataFrame(builtin.corpus("digits").table().rows).head(40).reset_index(drop=True)
    task = tasks.get("image-classification")
    bundle = task.load_teacher("scratch:resnet-xs", sorted(rows["label"].unique()), {"seed": 0}, rows)
    model_dir = work / "digits-onnx"
    model_dir.mkdir(parents=True)
    task.export_onnx(bundle, model_dir, rows)
    return model_dir


def setup(home: Path, work: Path) -> dict:
    from modelfactory import registry
    from modelfactory.accounts.tenants import add_tenant
    from modelfactory.artifacts import ArtifactStore, content_hash

    keys = {name: add_tenant(name)[1] for name in ("acme", "globex", "mallory")}
    model_dir = digits_onnx(work)
    store = ArtifactStore()
    for name, tenant in (("digits", "acme"), ("rivals", "globex")):
        aid = content_hash({"abuse-bench": name})
        if not store.exists(aid):
            with store.create(aid, kind="model", producer="bench") as (tmp, _):
                shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        registry.register(name=name, tenant=tenant, task="image-classification", artifact_id=aid, metrics={},
                          lineage={}, card_fn=lambda n, v: "")
    base = tiny_llama(work)
    sys.path.insert(0, str(REPO))
    from tests.llm_support import make_adapter, register_adapter

    for name, tenant, seed in (("acme.bot", "acme", 100), ("acme_bot", "globex", 101)):
        make_adapter(base, work / f"adapter-{seed}", seed=seed)
        register_adapter(name, work / f"adapter-{seed}", tenant=tenant)
    return {"keys": keys, "base": base}


def tiny_llama(work: Path) -> Path:
    """A 2-layer, 64-wide random Llama with a byte-level BPE tokenizer trained in seconds (as the tests build)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from modelfactory.data import builtin
    from modelfactory.data.ingest import read_table

    c = builtin.corpus("rotten-tomatoes")
    texts = [r["text"] for r in read_table(c.path(), c.roles).rows[:600]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"],
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    out = work / "tiny-llama"
    fast.save_pretrained(out)
    t = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(t), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


# --- the attacks ----------------------------------------------------------------------------------------------
def control_plane(cp: Server, keys: dict) -> None:
    acme, mallory = client(cp.url + "/api/v1", keys["acme"]), client(cp.url + "/api/v1", keys["mallory"])
    order = {"name": "o", "task": "text-classification", "data": {"dataset": "x"}, "teacher": {"model": "t"}}

    def post_order(content, ctype, expect):
        r = mallory.post("/orders", content=content, headers={"content-type": ctype})
        return answer(r), r.status_code in expect

    attack(cp, "order spec: billion laughs (YAML aliases nested 9 deep, ~600 bytes)", "400, aliases refused",
           lambda: post_order(billion_laughs(), "application/yaml", (400,)))
    attack(cp, "order spec: JSON nested 100,000 deep", "4xx", lambda: post_order(
        "[" * 100_000 + "]" * 100_000, "application/json", range(400, 500)))
    attack(cp, "order spec: teacher.epochs 1e9, a 200 kB name", "422, short message", lambda: (
        lambda r: (answer(r), r.status_code == 422 and len(r.text) < 2000))(
        mallory.post("/orders", json={**order, "name": "y" * 200_000, "teacher": {"model": "t", "epochs": 1e9}})))
    attack(cp, "order spec: chunked body of 96 MB (upload limit 64 MB)", "413", lambda: post_order(
        chunks(96 << 20), "application/yaml", (413,)))

    def upload(name, filename, content, expect, check=lambda r: True):
        r = mallory.post("/datasets", data={"name": name}, files={"file": (filename, content, "application/gzip")})
        return answer(r), r.status_code in expect and check(r)

    bomb = gz_field_bomb(1024)
    attack(cp, f"upload: .csv.gz of {len(bomb) / 1e6:.1f} MB holding one 1 GiB field (MF_MAX_TABLE_MB=256)",
           "400, refused while streaming", lambda: upload("bomb", "bomb.csv.gz", bomb, (400,),
                                                          lambda r: "MF_MAX_TABLE_MB" in r.text))
    long_row = b"text,label\nok,pos\n" + b"x" * 300_000 + b",neg\nfine,neg\n"
    attack(cp, "upload: a 300,000-character field", "400, a row error naming line 3", lambda: upload(
        "long", "long.csv", long_row, (400,), lambda r: "longer than" in r.text))
    attack(cp, "upload: CSV header not UTF-8", "400, clear error", lambda: upload(
        "hdr", "h.csv", b"t\xe9xt,label\na,b\n", (400,), lambda r: "UTF-8" in r.text))
    zb = small_member_zip()
    attack(cp, f"upload: zip of 256 members just under 1 MiB each ({len(zb) / 1e3:.0f} kB)", "400, zip bomb",
           lambda: upload("zipbomb", "z.zip", zb, (400,), lambda r: "zip bomb" in r.text))
    attack(cp, "upload: 50,000 bad rows", "400, 100 rows listed + a count", lambda: upload(
        "many", "many.csv", b"text,label\n" + b",x\n" * 50_000 + b"good,y\n", (400,),
        lambda r: len(r.json().get("rows", [])) == 100 and r.json().get("rows_omitted") == 49_900))
    r0 = acme.post("/datasets", data={"name": "acme-data"},
                   files={"file": ("a.csv", b"text,label\n" + b"good,pos\nbad,neg\n" * 5, "text/csv")})
    assert r0.status_code == 201, r0.text
    attack(cp, "upload under another tenant's dataset name", "404, owner not named", lambda: upload(
        "acme-data", "a.csv", b"text,label\na,b\n", (404,), lambda r: "not available" in r.text
        and "another tenant" not in r.text))
    attack(cp, "order at priority 'urgent' without the grant", "403", lambda: (
        lambda r: (answer(r), r.status_code == 403))(mallory.post("/orders", params={"priority": "urgent"},
                                                                  json=order)))

    def mint():
        codes = [mallory.post("/tenants/mallory/keys", json={"label": f"k{i}"}).status_code for i in range(25)]
        return f"{codes.count(201)} x 201, then {codes[codes.index(409)] if 409 in codes else codes[-1]}", \
            codes.count(201) == 19 and codes[-1] == 409

    attack(cp, "mint 25 keys with a tenant key (cap 20 active)", "19 more created, then 409", mint)

    def guess(source):
        codes = []
        with client(cp.url + "/api/v1", None, source=source) as c:
            for i in range(40):
                codes.append(c.get("/me", headers={"Authorization": f"Bearer mfk_guess{i:04d}"}).status_code)
        return f"{codes.count(401)} x 401, then {codes.count(429)} x 429", codes.count(401) == 20 and \
            codes.count(429) == 20

    attack(cp, "guess 40 API keys from one address (limit 20 failures/min)", "20 x 401, then 429",
           lambda: guess("127.0.0.2"))
    attack(cp, "revoke all of a tenant's keys (after a leak)", "200, every key then 401", lambda: (
        lambda r: (answer(r)[:40] + f" · {len(r.json())} revoked; /me now {mallory.get('/me').status_code}",
                   r.status_code == 200 and mallory.get("/me").status_code == 401))(mallory.delete(
            "/tenants/mallory/keys")))
    acme.close()
    mallory.close()


def oip(s: Server, keys: dict) -> None:
    acme = client(s.url, keys["acme"])
    attack(s, "infer: chunked body of 256 MB (limit 64 MB)", "413", lambda: (
        lambda r: (answer(r), r.status_code == 413))(acme.post(
            "/v2/models/digits/infer", content=chunks(256 << 20), headers={"content-type": "application/json"})))
    gz = zlib.compressobj(wbits=31)
    bomb = gz.compress(b" " * (256 << 20)) + gz.flush()
    attack(s, f"infer: gzip body of {len(bomb) / 1e6:.2f} MB inflating to 256 MiB", "413", lambda: (
        lambda r: (answer(r), r.status_code == 413))(acme.post(
            "/v2/models/digits/infer", content=bomb, headers={"content-encoding": "gzip"})))
    attack(s, "load config: max_batch_size 1,000,000, max_queue_size 10^9", "400", lambda: (
        lambda r: (answer(r), r.status_code == 400))(acme.post("/v2/repository/models/digits/load", json={
            "parameters": {"config": {"max_batch_size": 1_000_000,
                                      "dynamic_batching": {"default_queue_policy": {"max_queue_size": 10**9}}}}})))
    doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                       "data": [base64.b64encode(png_header(100_000, 100_000)).decode()]}]}
    attack(s, "infer: a PNG whose header claims 100,000 x 100,000 pixels", "400, pixel limit", lambda: (
        lambda r: (answer(r), r.status_code == 400 and "pixels" in r.text))(acme.post(
            "/v2/models/digits/infer", json=doc)))
    attack(s, "/metrics with a tenant key", "403", lambda: (lambda r: (answer(r), r.status_code == 403))(
        acme.get("/metrics")))
    attack(s, "infer another tenant's model", "404", lambda: (lambda r: (answer(r), r.status_code == 404))(
        acme.post("/v2/models/rivals/infer", json=doc)))

    def guess():
        with client(s.url, None, source="127.0.0.3") as c:
            codes = [c.get("/v2/models/digits", headers={"Authorization": f"Bearer mfk_g{i}"}).status_code
                     for i in range(30)]
        return f"{codes.count(401)} x 401, then {codes.count(429)} x 429", codes.count(429) == 10

    attack(s, "guess 30 API keys from one address", "20 x 401, then 429", guess)
    acme.close()


def llm(s: Server, keys: dict) -> None:
    acme, globex = client(s.url, keys["acme"]), client(s.url, keys["globex"])

    def say(c, model):
        r = c.post("/v1/chat/completions", json={"model": model, "max_tokens": 12, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Tell me a story."}]})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    def lookalike():
        a1, g1 = say(acme, "acme.bot"), say(globex, "acme_bot")
        a2 = say(acme, "acme.bot")
        return f"acme.bot -> {a1[:30]!r}; acme_bot -> {g1[:30]!r}", a1 == a2 and a1 != g1

    attack(s, "look-alike adapters acme.bot (acme) and acme_bot (globex)", "each answered by its own adapter",
           lookalike)
    attack(s, "chat: chunked body of 64 MB (limit 16 MB)", "413", lambda: (
        lambda r: (answer(r), r.status_code == 413))(acme.post(
            "/v1/chat/completions", content=chunks(64 << 20), headers={"content-type": "application/json"})))
    attack(s, "/metrics with a tenant key", "403", lambda: (lambda r: (answer(r), r.status_code == 403))(
        acme.get("/metrics")))
    attack(s, "/v1/models without a key", "401", lambda: (lambda r: (answer(r), r.status_code == 401))(
        httpx.get(s.url + "/v1/models", timeout=60)))
    acme.close()
    globex.close()


# --- the worker: a tenant's command jobs and stage jobs on a live worker ----------------------------------------
WORKER_LIMITS = {"MF_JOB_PIDS_MAX": "64", "MF_JOB_DISK_GB": "0.25", "MF_STAGE_TIME_LIMIT_S": "15"}
PLATFORM_SECRETS = {"AWS_SECRET_ACCESS_KEY": "platform-cloud-secret-abuse", "MF_BENCH_DB_PASSWORD": "pg-secret-abuse"}
# What a tenant's command looks for: the platform's secrets, its files, another tenant's job, the control plane.
SNOOP = r'''
import json, os, socket, sys
home, other, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read(200).decode("latin-1")
    except OSError as e:
        return None
def listing(path):
    try:
        return sorted(os.listdir(path))[:20]
    except OSError:
        return None
try:
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    connected = True
except OSError:
    connected = False
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith(("MF_", "AWS_"))},
                  "database": read(os.path.join(home, "mf.db")), "artifacts": listing(os.path.join(home, "artifacts")),
                  "other_job_file": read(other), "platform_environ": read("/proc/1/environ"),
                  "uid": os.getuid(), "connected_to_control_plane": connected}))
'''
FORK = ("import os, time\nn = 0\ntry:\n    while n < 100000:\n        if os.fork() == 0:\n            time.sleep(60)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('forks', n, e.strerror)\n")


def tenant_python() -> str:
    """A Python the job's unprivileged uid can run (the venv may live under /root)."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def wait_job(job_id: int, timeout: float = 300) -> dict:
    from modelfactory.compute.tables import Job, pool_read

    deadline = time.time() + timeout
    while True:
        with pool_read() as s:
            j = s.get(Job, job_id)
            row = {"state": j.state, "attempts": j.attempts, "error": j.last_error or "", "result": j.result or {}}
        if row["state"] in ("succeeded", "failed", "cancelled") or time.time() > deadline:
            return row
        time.sleep(0.3)


def job_output(row: dict) -> str:
    try:
        return Path(row["result"].get("stdout", "")).read_text()[-4000:]
    except OSError:
        return ""


def survivors(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker in Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def worker_up() -> bool:
    """Some worker registered with this control plane is up and heartbeating."""
    from modelfactory.compute.tables import Worker, pool_read
    from modelfactory.store import utcnow

    with pool_read() as s:
        return any(w.state == "up" and (utcnow() - w.last_heartbeat).total_seconds() < 30
                   for w in s.query(Worker).all())


def worker_attacks(cp: Server, keys: dict) -> None:
    from modelfactory.compute import jobs

    sys.path.insert(0, str(Path(os.environ["MF_BENCH_KINDS"])))
    import mftest_kinds  # noqa: F401  (the stage kinds, registered here too for submit's validation)

    home = Path(os.environ["MF_HOME"])
    py = tenant_python()
    cp.also_healthy = worker_up

    def command(tenant: str, argv: list[str], **kw) -> dict:
        kw.setdefault("time_limit_s", 120)
        kw.setdefault("memory_gb", 0.5)
        return wait_job(jobs.submit(tenant, jobs.command_spec(argv, **kw)))

    # acme leaves a secret in its own job's work dir: mallory's commands go looking for it
    secret = command("acme", ["sh", "-c", "echo acme-only-secret > secret.txt"])
    other = Path(secret["result"].get("workdir") or home / "missing") / "work" / "secret.txt"

    def snoop():
        r = command("mallory", [py, "-c", SNOOP, str(home), str(other), str(cp.port)])
        seen = json.loads(job_output(r).strip().splitlines()[-1]) if r["state"] == "succeeded" else {}
        leaked = [k for k in ("database", "artifacts", "other_job_file") if seen.get(k)]
        pid1 = seen.get("platform_environ") or ""  # its pid namespace's init: under bubblewrap, itself
        if "MF_ADMIN_KEY" in pid1 or ADMIN in pid1 or any(s in pid1 for s in PLATFORM_SECRETS.values()):
            leaked.append("the platform's /proc/1/environ")
        env = seen.get("env", {})
        secrets_seen = [k for k in ("MF_ADMIN_KEY", *PLATFORM_SECRETS) if k in env]
        secrets_seen += [k for k, v in env.items() if ADMIN in v or any(s in v for s in PLATFORM_SECRETS.values())]
        obs = (f"{r['state']}; uid {seen.get('uid')}; secrets seen: {secrets_seen or 'none'}; platform files read: "
               f"{leaked or 'none'}; control plane reachable: {seen.get('connected_to_control_plane')}")
        ok = (r["state"] == "succeeded" and not secrets_seen and not leaked
              and seen.get("connected_to_control_plane") is False and seen.get("uid") not in (None, 0, os.getuid()))
        return obs, ok

    attack(cp, "tenant command: read MF_ADMIN_KEY and the platform's env, the database, the artifact store, "
               "another tenant's job dir; connect to the control plane's port",
           "runs as its own uid; finds none of them; no network", snoop)

    def fork_bomb():
        r = command("mallory", [py, "-c", FORK], time_limit_s=60)
        out = job_output(r).strip()
        n = int(out.split()[1]) if out.startswith("forks") else None
        left = survivors("os.fork()")
        obs = f"{r['state']}; {out or r['error'][:100]}; processes left after the job: {len(left)}"
        return obs, n is not None and n <= int(WORKER_LIMITS["MF_JOB_PIDS_MAX"]) and not left

    attack(cp, f"tenant command: fork bomb (pids.max {WORKER_LIMITS['MF_JOB_PIDS_MAX']})",
           "fork fails at the cap; nothing left once the job ends", fork_bomb)

    def memory_bomb():
        r = command("mallory", [py, "-c", "x = b'a' * (3 << 30)"], memory_gb=0.25)
        return f"{r['state']}: {r['error'][:160]}", r["state"] == "failed" and "memory limit" in r["error"]

    attack(cp, "tenant command: allocate 3 GiB with memory_gb 0.25", "failed: memory limit", memory_bomb)

    def disk_fill():
        fill = ("i=0; while [ $i -lt 40 ]; do dd if=/dev/zero of=fill$i bs=1M count=100 2>/dev/null; "
                "i=$((i+1)); done; sleep 30")  # files under the per-file cap, together far over the job's
        r = command("mallory", ["sh", "-c", fill])
        return f"{r['state']}: {r['error'][:160]}", r["state"] == "failed" and "disk limit" in r["error"]

    attack(cp, f"tenant command: write 40 files of 100 MB (MF_JOB_DISK_GB {WORKER_LIMITS['MF_JOB_DISK_GB']})",
           "failed: disk limit", disk_fill)

    def setsid_escape():
        from modelfactory.compute.tables import Job, pool_read

        tag = "97.31"
        job_id = jobs.submit("mallory", jobs.command_spec(
            ["sh", "-c", f"setsid sh -c 'sleep {tag} & sleep {tag}' & sleep {tag}"], time_limit_s=300,
            memory_gb=0.5))
        deadline = time.time() + 120
        while len(survivors(f"sleep {tag}")) < 3 and time.time() < deadline:
            time.sleep(0.2)
        before = len(survivors(f"sleep {tag}"))
        from modelfactory.accounts.tenants import create_key

        _, key = create_key("mallory", "abuse bench: cancel")  # the control plane's attacks revoked its others
        with client(cp.url + "/api/v1", key) as c:
            r = c.post(f"/jobs/{job_id}/cancel")
        deadline = time.time() + 60
        while survivors(f"sleep {tag}") and time.time() < deadline:
            time.sleep(0.2)
        left = survivors(f"sleep {tag}")
        with pool_read() as s:
            state = s.get(Job, job_id).state
        return (f"cancel {r.status_code}; {before} processes before, {len(left)} after; job {state}",
                r.status_code == 200 and before >= 3 and not left and state == "cancelled")

    attack(cp, "tenant command: a setsid child, then the job is cancelled through the API",
           "200; every process of the job gone", setsid_escape)

    def stage(kind: str, expect: str, **kw):
        def run():
            r = wait_job(jobs.submit("mallory", jobs.Spec(kind=kind, payload={}, **kw)))
            return (f"{r['state']} after {r['attempts']} attempt(s): {r['error'][:150]}",
                    r["state"] == "failed" and r["attempts"] == 1 and r["error"].startswith(expect))
        return run

    attack(cp, "stage job: allocate 3 GiB with memory_gb 0.25", "failed once: memory limit",
           stage("mftest_hog", "memory limit", memory_gb=0.25, time_limit_s=300))
    attack(cp, f"stage job: sleep past the default time limit (MF_STAGE_TIME_LIMIT_S "
               f"{WORKER_LIMITS['MF_STAGE_TIME_LIMIT_S']})", "failed once: time limit",
           stage("mftest_sleeper", "time limit", memory_gb=0.25))

    def next_job():
        r = wait_job(jobs.submit("mallory", jobs.Spec(kind="mftest_fine", payload={"n": 1}, memory_gb=0.25,
                                                      time_limit_s=300)))
        return f"{r['state']}: {r['result']}", r["state"] == "succeeded" and r["result"] == {"fine": 1}

    attack(cp, "the worker after all of the above: one more job", "succeeded", next_job)


def worker_env(env: dict, work: Path) -> dict:
    """The platform's environment for the control plane and its worker: secrets a tenant must never see, the
    bench's limits, and its stage kinds."""
    kinds_dir = work / "kinds"
    kinds_dir.mkdir(exist_ok=True)
    sys.path.insert(0, str(REPO))
    from tests.test_sandbox_stage import KINDS  # the job kinds the stage-limit test attacks with

    (kinds_dir / "mftest_kinds.py").write_text(KINDS)
    os.environ["MF_BENCH_KINDS"] = str(kinds_dir)
    return {**env, **PLATFORM_SECRETS, **WORKER_LIMITS, "MF_HEARTBEAT_S": "1", "MF_WORKER_POLL_S": "0.2",
            "MF_JOB_KINDS": "modelfactory.factory.jobkinds,mftest_kinds",
            "PYTHONPATH": os.pathsep.join([str(kinds_dir), str(REPO)])}


def refusals(env: dict, base: Path) -> list[dict]:
    out = []
    for cmd in (["serve"], ["serve-llm", "--base", str(base)]):
        r = subprocess.run([sys.executable, "-m", "modelfactory.cli", *cmd, "--host", "0.0.0.0", "--port", "1"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        out.append({"server": f"mf {cmd[0]}", "attack": "start on 0.0.0.0 without --auth",
                    "expected": "refuses to start, exit 2", "observed": f"exit {r.returncode}: "
                    f"{r.stderr.strip().splitlines()[-1][:160] if r.stderr.strip() else ''}",
                    "as_expected": r.returncode == 2 and "refusing" in r.stderr, "still_healthy": None,
                    "same_process": None, "rss_hwm_mb": None, "rss_now_mb": None, "seconds": None})
    return out


def write(meta: dict, servers: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "abuse.json").write_text(json.dumps({"meta": meta, "servers": servers, "attacks": RESULTS_ROWS},
                                                   indent=2))
    ok = sum(1 for r in RESULTS_ROWS if r["as_expected"] and r["still_healthy"] is not False)
    lines = [
        "# Abuse bench (issue 17)", "",
        f"{meta['when']} · {meta['machine']} · `python bench/abuse.py` · limits {meta['limits']}", "",
        f"**{ok} of {len(RESULTS_ROWS)} attacks answered as expected with the server healthy afterwards.** "
        "Each server is one process for all its attacks (never restarted); `healthy` = the same process answered "
        "its health route after the attack; memory = the process's RSS high-water mark (VmHWM) after the attack "
        "(cumulative: it only grows).", "",
        "| server | baseline RSS (MB) | final high-water (MB) |", "|---|---:|---:|"]
    for name, s in servers.items():
        lines.append(f"| {name} | {s['baseline_mb']:.0f} | {s['final_hwm_mb']:.0f} |")
    lines += ["", "| server | attack | expected | observed | ok | healthy after | RSS high-water (MB) |",
              "|---|---|---|---|---|---|---:|"]
    for r in RESULTS_ROWS:
        obs = r["observed"].replace("|", "\\|").replace("\n", " ")[:160]
        healthy = "n/a" if r["still_healthy"] is None else ("yes" if r["still_healthy"] else "**NO**")
        lines.append(f"| {r['server']} | {r['attack']} | {r['expected']} | {obs} | "
                     f"{'yes' if r['as_expected'] else '**NO**'} | {healthy} | "
                     f"{'' if r['rss_hwm_mb'] is None else r['rss_hwm_mb']} |")
    lines += ["", "Worker rows: `healthy after` = the control plane answered and its worker was still up; the "
              f"worker ran with {', '.join(f'{k}={v}' for k, v in WORKER_LIMITS.items())}."]
    (RESULTS / "abuse.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["control", "serve", "llm", "worker"], help="run one server's attacks only")
    only = ap.parse_args().only
    work = Path(tempfile.mkdtemp(prefix="mf-abuse-"))
    work.chmod(0o711)  # tenants' commands run as their own uids (as root): they must be able to pass through
    home = work / "mfhome"
    env = {**os.environ, "MF_HOME": str(home), "MF_ADMIN_KEY": ADMIN, "HF_HUB_OFFLINE": "1", **LIMITS}
    env.pop("MF_DATABASE_URL", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("MF_", "HF_"))})
    os.environ.pop("MF_DATABASE_URL", None)
    print(f"setting up in {work} ...", flush=True)
    if only == "worker":  # the tenants are all it needs
        from modelfactory.accounts.tenants import add_tenant

        made = {"keys": {name: add_tenant(name)[1] for name in ("acme", "globex", "mallory")}, "base": None}
    else:
        made = setup(home, work)
    keys, servers = made["keys"], {}
    meta = {"when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "limits": ", ".join(f"{k}={v}" for k, v in LIMITS.items())}
    plan = [("control plane (mf server)", ["server", "--workers", "0"], "/openapi.json", control_plane),
            ("mf serve --auth", ["serve", "--auth"], "/v2/health/ready", oip),
            ("mf serve-llm --auth", ["serve-llm", "--auth", "--base", str(made["base"]), "--base-name", "tiny"],
             "/health", llm),
            ("control plane + worker (mf server --workers 1)", ["server", "--workers", "1", "--worker-cpu", "2",
                                                               "--worker-memory-gb", "4"], "/openapi.json",
             worker_attacks)]
    if only:
        plan = [p for p in plan if {"control": "control plane (mf server)", "serve": "mf serve --auth",
                                    "llm": "mf serve-llm --auth"}.get(only, "control plane + worker") in p[0]]
    try:
        for name, args, health, run in plan:
            s = Server(name, args, health, worker_env(env, work) if run is worker_attacks else env,
                       work / f"{name.split()[0]}-{args[0]}.log")
            try:
                run(s, keys)
            finally:
                servers[name] = {"baseline_mb": s.baseline_mb,
                                 "final_hwm_mb": (proc_kb(s.pid, "VmHWM") or 0) / 1024,
                                 "restarted": s.proc.poll() is not None}
                s.stop()
        if not only:
            RESULTS_ROWS.extend(refusals(env, made["base"]))
    finally:
        if not only:
            write(meta, servers)
    if not only:
        print(f"wrote {RESULTS / 'abuse.md'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
