"""A real Label Studio round trip (issue 18, item 3): `mf label export` -> Label Studio -> `mf label import`.

Label Studio runs from its own virtualenv (its pins are its own, never in ours), created once with pip from PyPI
and cached outside the repo (MF_LABEL_STUDIO_VENV, default ~/.cache/modelfactory/label-studio-venv), beside a
migrated data dir that holds the reviewer (created from environment variables with a known API token). Each run
starts it on a free 127.0.0.1 port on a copy of that data dir, makes a project with the labeling config
`mf label export` wrote, imports the exported tasks (the teacher's predictions pre-filled) through its API,
annotates them through the API as a reviewer would (one label, one label changed by a later annotation, one task
skipped), exports JSON and JSON-MIN, and checks that `mf label import` turns each export into the labeled dataset
version; and the same for image rows, which travel as data URIs.

The dataset is the one tests/test_labels.py builds (`pool`, then the same teacher predictions), so the export this
test reads back is the recorded fixture the fast tests use: run with MF_RECORD_LABEL_STUDIO=1 to re-record it into
tests/data/label_studio/ (after a Label Studio upgrade, say).

If pip cannot reach PyPI the test skips with pip's answer; under CI (which reaches PyPI) that skip is a failure.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from modelfactory.data import labels, versions

from .conftest import run_mf
from .test_labels import _auto, _probs

LS_VERSION = "1.23.2"
VENV = Path(os.environ.get("MF_LABEL_STUDIO_VENV", "~/.cache/modelfactory/label-studio-venv")).expanduser()
FIXTURES = Path(__file__).parent / "data" / "label_studio"
RECORD = os.environ.get("MF_RECORD_LABEL_STUDIO", "") == "1"

pytestmark = [pytest.mark.slow, pytest.mark.ci_required]


def _installed() -> bool:
    return bool(glob.glob(str(VENV / "lib" / "python*" / "site-packages" / f"label_studio-{LS_VERSION}.dist-info")))


def label_studio_venv() -> Path:
    """The cached virtualenv holding label-studio==LS_VERSION: made on first use (a lock keeps two test runs from
    building it at once); skips, with pip's answer, when PyPI cannot be reached."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / (VENV.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return VENV
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        pip = [str(VENV / "bin" / "python"), "-m", "pip"]
        probe = subprocess.run([*pip, "index", "versions", "label-studio"], capture_output=True, text=True,
                               timeout=300)
        if probe.returncode != 0 or LS_VERSION not in probe.stdout:
            shutil.rmtree(VENV, ignore_errors=True)
            pytest.skip(f"pip cannot get label-studio=={LS_VERSION} from PyPI: "
                        f"{(probe.stderr or probe.stdout).strip()[-400:]}")
        started = time.monotonic()
        proc = subprocess.run([*pip, "install", "-q", f"label-studio=={LS_VERSION}"], capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            pytest.fail(f"pip install label-studio=={LS_VERSION} failed:\n{proc.stderr[-2000:]}")
        print(f"label-studio {LS_VERSION} installed into {VENV} in {time.monotonic() - started:.0f} s")
        return VENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudio:
    """`label-studio start` on 127.0.0.1 (its Django dev server), a fresh data dir, one user with a known token."""

    def __init__(self, venv: Path, data_dir: Path, token: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = data_dir / "label-studio.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MF_", "DJANGO", "LABEL_STUDIO"))}
        env.update({"LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false",
                    "COLLECT_ANALYTICS": "false", "LABEL_STUDIO_USERNAME": "reviewer@example.com",
                    "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16), "LABEL_STUDIO_USER_TOKEN": self.token,
                    "PYTHONUNBUFFERED": "1"})
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(data_dir), "--enable-legacy-api-token"],
            env=env, cwd=data_dir, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=120)
        deadline = time.monotonic() + 300  # the first start migrates a fresh database
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if self.http.get("/api/current-user/whoami").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"label-studio did not answer in 300 s:\n{self.tail()}")
            time.sleep(1)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def call(self, method: str, path: str, expect: int, **kw) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:1000]}"
        return r

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def data_template(venv: Path) -> tuple[Path, str]:
    """A data dir whose database is migrated and holds the reviewer (with the API token kept beside it), made once
    per cached venv: migrating a fresh database takes Label Studio minutes on a busy 2-core machine, and each run
    starts from a copy of this one instead."""
    template = venv / f"mf-data-template-{LS_VERSION}"
    with open(VENV.parent / (VENV.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "token").is_file():
            shutil.rmtree(template, ignore_errors=True)
            template.mkdir()
            token = secrets.token_hex(20)
            started = time.monotonic()
            LabelStudio(venv, template, token).stop()
            (template / "token").write_text(token)
            print(f"label-studio's data template made in {time.monotonic() - started:.0f} s")
    return template, (template / "token").read_text()


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = label_studio_venv()
    template, token = data_template(venv)
    data = tmp_path_factory.mktemp("label-studio-data")
    shutil.copytree(template, data, ignore=shutil.ignore_patterns("token", "*.log"), dirs_exist_ok=True)
    started = time.monotonic()
    ls = LabelStudio(venv, data, token)
    print(f"label-studio answered {time.monotonic() - started:.0f} s after its start")
    yield ls
    ls.stop()


def choice(label: str) -> list[dict]:
    """An annotation's result as Label Studio's editor makes it for our config."""
    return [{"id": secrets.token_hex(5), "from_name": "label", "to_name": "text", "type": "choices",
             "origin": "manual", "value": {"choices": [label]}}]


def test_export_review_in_label_studio_and_import(label_studio, tmp_path):
    # The dataset of tests/test_labels.py (`pool` + the same teacher predictions), made with `mf data add`.
    seed, unl = tmp_path / "seed.csv", tmp_path / "pool.csv"
    seed.write_text("text,label\ngreat film,pos\nloved it,pos\nawful,neg\nboring mess,neg\n")
    unl.write_text("text\n" + "\n".join(f"review number {i}" for i in range(6)) + "\n")
    proc = run_mf("data", "add", "reviews", str(seed), "--unlabeled", str(unl), "--json")
    assert proc.returncode == 0, proc.stderr
    v2 = _auto(versions.resolve("reviews"), _probs(0.99, 0.02, 0.6, 0.7, 0.95, 0.45), threshold=0.9)
    proc = run_mf("label", "export", str(v2), "--out", str(tmp_path / "review.json"))
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads((tmp_path / "review.json").read_text())
    config = (tmp_path / "review.xml").read_text()
    assert [t["data"]["mf_id"] for t in tasks] == [9, 6, 7]

    # A project with the exported config, and the exported tasks imported with their predictions.
    ls = label_studio
    project = ls.call("POST", "/api/projects", 201, json={"title": "mf review", "label_config": config}).json()
    pid = project["id"]
    imported = ls.call("POST", f"/api/projects/{pid}/import", 201, json=tasks).json()
    assert imported["task_count"] == 3 and imported["prediction_count"] == 3, imported
    listed = ls.call("GET", "/api/tasks", 200, params={"project": pid, "page_size": 100}).json()["tasks"]
    by_mf = {t["data"]["mf_id"]: t for t in listed}
    assert sorted(by_mf) == [6, 7, 9] and by_mf[9]["data"]["text"] == "review number 5"
    preds = ls.call("GET", "/api/predictions", 200, params={"project": pid}).json()
    assert sorted(p["model_version"] for p in preds) == ["teacher@1"] * 3
    assert all(p["result"][0]["value"]["choices"][0] in ("pos", "neg") for p in preds)

    # The reviewer: row 9 labeled 'neg', then changed to 'pos' by a later annotation; row 6 'pos'; row 7 skipped.
    ls.call("POST", f"/api/tasks/{by_mf[9]['id']}/annotations/", 201, json={"result": choice("neg")})
    time.sleep(1.1)  # the later annotation is newer by its timestamps (the export orders by updated_at)
    ls.call("POST", f"/api/tasks/{by_mf[9]['id']}/annotations/", 201, json={"result": choice("pos")})
    ls.call("POST", f"/api/tasks/{by_mf[6]['id']}/annotations/", 201, json={"result": choice("pos")})
    ls.call("POST", f"/api/tasks/{by_mf[7]['id']}/annotations/", 201, json={"result": [], "was_cancelled": True})

    exports = {}
    for kind in ("JSON", "JSON_MIN"):
        r = ls.call("GET", f"/api/projects/{pid}/export", 200, params={"exportType": kind})
        exports[kind] = tmp_path / f"export-{kind.lower()}.json"
        exports[kind].write_bytes(r.content)
    full = json.loads(exports["JSON"].read_text())
    assert sorted(t["data"]["mf_id"] for t in full) == [6, 7, 9]
    assert [len(t["annotations"]) for t in sorted(full, key=lambda t: t["data"]["mf_id"])] == [1, 1, 2]

    # `mf label import` reads the real export into the labeled version.
    proc = run_mf("label", "import", str(v2), str(exports["JSON"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dataset"] == "reviews@3" and json.loads(proc.stdout)["rows"] == 2
    v3 = versions.resolve("reviews@3")
    df = versions.load_rows(v3.artifact_id).set_index("mf_id")
    assert df.loc[9, ["label", "label_source"]].tolist() == ["pos", "import"]
    assert df.loc[6, ["label", "label_source"]].tolist() == ["pos", "import"]
    assert pd.isna(df.loc[7, "label"])  # skipped in Label Studio: still in the queue
    assert v3.stats["label_sources"] == {"human": 4, "teacher": 3, "import": 2, "unlabeled": 1}

    # JSON-MIN: one flat object per kept annotation (row 9 twice, the newest first): the same labels, so the same
    # rows, hence the same version.
    proc = run_mf("label", "import", str(v2), str(exports["JSON_MIN"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dataset"] == "reviews@3" and json.loads(proc.stdout)["rows"] == 2

    if RECORD:  # the fixture the fast tests read (tests/test_labels.py)
        FIXTURES.mkdir(parents=True, exist_ok=True)
        (FIXTURES / "config.xml").write_text(config)
        for kind, path in exports.items():
            data = json.loads(path.read_text())
            (FIXTURES / f"export-{kind.lower().replace('_', '-')}.json").write_text(
                json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        (FIXTURES / "recorded.json").write_text(json.dumps(
            {"label_studio": LS_VERSION, "project_config": "config.xml",
             "recorded_by": "tests/test_label_studio_real.py (MF_RECORD_LABEL_STUDIO=1)"}, indent=1) + "\n")


def test_image_tasks_travel_as_data_uris(label_studio, tmp_path, digits_df):
    """Image rows go out as PNG data URIs inside the tasks (no storage Label Studio must reach): Label Studio
    takes them as they are, with the image config `mf label export` writes, and a review comes back."""
    for i, row in enumerate(digits_df.head(6).to_dict("records")):
        folder = tmp_path / "digits" / str(row["label"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(row["image"])
    proc = run_mf("data", "add", "digits-review", str(tmp_path / "digits"), "--json")
    assert proc.returncode == 0, proc.stderr
    proc = run_mf("label", "export", "digits-review", "--rows", "all", "--out", str(tmp_path / "img.json"))
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads((tmp_path / "img.json").read_text())
    assert len(tasks) == 6 and all(t["data"]["image"].startswith("data:image/png;base64,") for t in tasks)

    ls = label_studio
    config = (tmp_path / "img.xml").read_text()
    pid = ls.call("POST", "/api/projects", 201, json={"title": "mf images", "label_config": config}).json()["id"]
    assert ls.call("POST", f"/api/projects/{pid}/import", 201, json=tasks).json()["task_count"] == 6
    listed = ls.call("GET", "/api/tasks", 200, params={"project": pid, "page_size": 100}).json()["tasks"]
    by_mf = {t["data"]["mf_id"]: t for t in listed}
    assert {m: t["data"]["image"] for m, t in by_mf.items()} == {t["data"]["mf_id"]: t["data"]["image"]
                                                                 for t in tasks}
    df = labels.with_provenance(versions.load_rows(versions.resolve("digits-review").artifact_id)).set_index("mf_id")
    other = next(lab for lab in sorted(df["label"].unique()) if lab != df.loc[0, "label"])
    ls.call("POST", f"/api/tasks/{by_mf[0]['id']}/annotations/", 201, json={"result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [other]}}]})
    export = tmp_path / "img-export.json"
    export.write_bytes(ls.call("GET", f"/api/projects/{pid}/export", 200, params={"exportType": "JSON"}).content)
    proc = run_mf("label", "import", "digits-review", str(export), "--json")
    assert proc.returncode == 0, proc.stderr
    back = versions.load_rows(versions.resolve("digits-review@2").artifact_id).set_index("mf_id")
    assert back.loc[0, ["label", "label_source"]].tolist() == [other, "import"]
    assert (back.drop(index=0)["label_source"] == "human").all()
