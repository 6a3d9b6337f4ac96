"""Shared fixtures: an isolated MF_HOME per test, a tiny BERT teacher the tests build (real tokenizer, random
small weights), and small samples of the real demo corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# The search report's `Chosen:` line for an order without accuracy targets: the plain cheapest-meeting rule names
# the model whatever the validation split's noise (a trial, or the classical baseline when it is cheapest).
PLAIN_CHOICE = re.compile(r"\nChosen: (trial \d+|the baseline), the fastest, then smallest, model meeting every "
                          r"target\.\n")

# --- skips that CI must not have (issue 18) ----------------------------------------------------------------------
# Locally a test whose system dependency is missing skips and says why (`make test` runs pytest with -rs). Under
# CI (CI=true; .ci/run sets it) the PostgreSQL, browser and isolation tests must run, since .ci/run installs
# PostgreSQL and Chromium (the isolation tests need root too): a skip of one of them is reported as a failure, with
# the skip's reason.
# Which tests: any that uses the `postgres_server` fixture, any marked `ci_required` (the browser test), and
# every test in test_sandbox.py that a `skipif` marker would skip (no root, no usable bubblewrap, ...).
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def pytest_configure(config):
    config.addinivalue_line("markers", "ci_required: under CI=true a skip of this test is a failure (the "
                                       "dependency it skips without is one CI installs)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()) or (
                item.path.name == "test_sandbox.py" and any(item.iter_markers("skipif"))):
            item.add_marker(pytest.mark.ci_required)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("ci_required"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true, and this test must run under CI, but it skipped: {reason}"


@pytest.fixture(autouse=True)
def _restore_umask():
    """`mf`'s main() sets the platform's umask (077) for its process; a test that calls it in-process must not
    leave it to the tests after it (files they make for another uid would be unreadable)."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(autouse=True)
def mf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "mfhome"
    monkeypatch.setenv("MF_HOME", str(home))
    monkeypatch.delenv("MF_DATABASE_URL", raising=False)
    for var in ("MF_SERVER", "MF_API_KEY", "MF_ADMIN_KEY"):  # a developer's shell must not send tests remote
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide BERT with MiniLM's real tokenizer, saved as a Hugging Face model dir."""
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-bert"))


def make_tiny_teacher(out: Path) -> Path:
    """The `tiny_teacher` fixture's model, saved in `out` (bench/chaos.py builds its orders' teacher with it)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from modelfactory.tasks.pretrained import resolve

    tok = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def corpus_df() -> pd.DataFrame:
    from modelfactory.data import builtin
    from modelfactory.data.ingest import read_table

    c = builtin.corpus("rotten-tomatoes")
    return pd.DataFrame(read_table(c.path(), c.roles).rows)


def sample_csv(df: pd.DataFrame, path: Path, n: int, seed: int = 0) -> Path:
    """n rows per label from the real corpus, written as a CSV with text/label columns."""
    parts = [g.sample(n=min(n, len(g)), random_state=seed) for _, g in df.groupby("label")]
    pd.concat(parts).sample(frac=1, random_state=seed).to_csv(path, index=False)
    return path


def tiny_order(name: str, data: Path, teacher_dir: Path, **overrides) -> dict:
    spec = {
        "name": name,
        "task": "text-classification",
        "data": {"path": str(data)},
        # min_steps/retries off: a random tiny teacher is not what they are for, and they multiply its steps
        "teacher": {"model": str(teacher_dir), "epochs": 1, "max_length": 32, "lr": 1e-3, "min_steps": 0,
                    "retries": 0},
        "student": {"layers": 1, "epochs": 1, "lr": 1e-3},
        "split": {"val": 0.15, "test": 0.2, "seed": 0},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def run_mf(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelfactory.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO)


def bill_sample_usage(tenant: str) -> int:
    """One billed hour of a command job named 'billed' and five inference requests on `sentiment@1` in the usage
    ledger of `tenant`, for the usage commands to show; the job's id."""
    import datetime as dt

    from modelfactory.accounts.ledger import record_attempt, record_inference
    from modelfactory.compute import jobs as pool_jobs
    from modelfactory.compute.tables import Job, pool_tx
    from modelfactory.store import utcnow

    job_id = pool_jobs.submit(tenant, pool_jobs.Spec(kind="command", payload={"argv": ["true"], "env": {}},
                                                     name="billed"))
    now = utcnow()
    with pool_tx() as s:
        record_attempt(s, s.get(Job, job_id), outcome="succeeded", started=now - dt.timedelta(hours=1), ended=now,
                       worker="w1")
        record_inference(s, tenant=tenant, model="sentiment", version=1, server="test", started=now, ended=now,
                         requests=5, rows=7, cpu_seconds=36.0)
    return job_id


def mf_in_process(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`mf ARGS` in this process (the entry point `mf` calls): exit code, stdout, stderr."""
    from modelfactory.cli import main

    monkeypatch.setattr(sys, "argv", ["mf", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def digits_df() -> pd.DataFrame:
    """The built-in `digits` corpus (1,797 8x8 grey PNGs, labels '0'..'9') as image/label rows."""
    from modelfactory.data import builtin

    return pd.DataFrame(builtin.corpus("digits").table().rows)


# --- PostgreSQL (issue 6) ----------------------------------------------------------------------------------------
# `postgres_url` starts one throwaway server for the session (tests/pg.py) and yields its admin URL, or skips with
# the reason; `pg_database` gives one test a fresh, empty database and points MF_DATABASE_URL at it (dropped after).
# MF_TEST_DATABASE=postgres runs the whole suite that way: every test on its own PostgreSQL database (and then a
# server that cannot be had stops the run with the reason instead of skipping everything).

TEST_DATABASE = os.environ.get("MF_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
if TEST_DATABASE not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"MF_TEST_DATABASE={TEST_DATABASE!r}: expected 'sqlite' (the default) or 'postgres'")


@pytest.fixture(scope="session")
def postgres_server():
    from . import pg

    try:
        server = pg.start()
    except pg.Unavailable as e:
        if TEST_DATABASE == "postgres":
            pytest.exit(f"MF_TEST_DATABASE=postgres, but PostgreSQL is unavailable: {e}", returncode=1)
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """SQLAlchemy URL (postgresql+psycopg://...) of the session's server, its `postgres` maintenance database."""
    return postgres_server.admin_url


@pytest.fixture
def pg_database(postgres_server, mf_home, monkeypatch):
    """A fresh PostgreSQL database for this test, set as MF_DATABASE_URL (after mf_home has cleared it)."""
    url = postgres_server.create_database()
    monkeypatch.setenv("MF_DATABASE_URL", url)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(autouse=True)
def _test_database(request, mf_home) -> str | None:
    """MF_TEST_DATABASE=postgres: every test runs against its own PostgreSQL database."""
    return request.getfixturevalue("pg_database") if TEST_DATABASE == "postgres" else None
