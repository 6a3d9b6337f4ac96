"""Shared pieces of the inference-server tests (test_serve*.py import them; this module has no tests).

Each serving test module works in one MF_HOME for the whole module (the registry, the tenants, the ledger): real
models are exported once per session (a tiny BERT text classifier from the `tiny_teacher` checkpoint, a scratch
ResNet on real 8x8 digits) and registered as artifacts, and real uvicorn servers run on free 127.0.0.1 ports in a
background thread of the test process.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from modelfactory import registry, tasks
from modelfactory.artifacts import ArtifactStore, content_hash

from .conftest import TEST_DATABASE

TEXT_TASK = "text-classification"
IMAGE_TASK = "image-classification"


@pytest.fixture(scope="module")
def mf_home(tmp_path_factory, request):
    """One MF_HOME (and database) for the whole module, overriding conftest's per-test one."""
    home = tmp_path_factory.mktemp("serve") / "mfhome"
    mp = pytest.MonkeyPatch()
    mp.setenv("MF_HOME", str(home))
    mp.delenv("MF_DATABASE_URL", raising=False)
    if TEST_DATABASE == "postgres":
        mp.setenv("MF_DATABASE_URL", request.getfixturevalue("postgres_server").create_database())
    yield home
    mp.undo()


@pytest.fixture(autouse=True)
def _test_database():
    """The module's database is chosen by `mf_home` above (per module, not per test)."""
    return None


@pytest.fixture(scope="session")
def review_texts(corpus_df) -> list[str]:
    return corpus_df["text"].sample(64, random_state=3).tolist()


@pytest.fixture(scope="session")
def text_model_dir(tiny_teacher, corpus_df, tmp_path_factory) -> Path:
    """The tiny BERT with a 3-label head (the corpus's labels), exported to ONNX (fp32) by its task family."""
    task = tasks.get(TEXT_TASK)
    sample = corpus_df.head(8)
    bundle = task.load_teacher(str(tiny_teacher), sorted(corpus_df["label"].unique()), {"max_length": 32}, sample)
    out = tmp_path_factory.mktemp("text-onnx")
    task.export_onnx(bundle, out, sample)
    return out


@pytest.fixture(scope="session")
def image_model_dir(digits_df, tmp_path_factory) -> Path:
    task = tasks.get(IMAGE_TASK)
    rows = digits_df.head(40).reset_index(drop=True)
    bundle = task.load_teacher("scratch:resnet-xs", sorted(rows["label"].unique()), {"seed": 0}, rows)
    out = tmp_path_factory.mktemp("image-onnx")
    task.export_onnx(bundle, out, rows)
    return out


def register(name: str, model_dir: Path, task: str, *, tenant: str = "acme", copy: int = 0,
             aliases: tuple[str, ...] = ()) -> registry.ModelRef:
    """Register `model_dir` as a new artifact (`copy` makes distinct artifacts, hence versions, of one dir)."""
    store = ArtifactStore()
    artifact_id = content_hash({"serve-test-model": str(model_dir), "copy": copy})
    if not store.exists(artifact_id):
        with store.create(artifact_id, kind="model", producer="test") as (tmp, _):
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    return registry.register(name=name, tenant=tenant, task=task, artifact_id=artifact_id, metrics={}, lineage={},
                             card_fn=lambda n, v: "", aliases=aliases)


def predictor_for(ref: str):
    r = registry.resolve(ref)
    return tasks.get(r.task).load_predictor(r.path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """An ASGI app (default: mf serve's `create_app(settings)`) under a real uvicorn server on a free 127.0.0.1
    port, in a background thread."""

    def __init__(self, settings=None, app=None):
        import uvicorn

        if app is None:
            from modelfactory.serve import create_app

            app = create_app(settings)
        self.app = app
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    @property
    def repository(self):
        return self.app.state.repository

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def metric(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
