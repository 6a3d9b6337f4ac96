"""What the platform writes under MF_HOME is private to it (issue 17, item 4): a real `mf order run` (database,
dataset and model artifacts, stage work dirs and checkpoints, the order's report and plots, the registry) and
`mf tenants add`, run as the platform's processes run (`mf` sets umask 077), leave nothing another uid can list or
read. The attacker is a process of uid `nobody` that knows the layout and tries every path by name."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from .conftest import run_mf, sample_csv, tiny_order

pytestmark = pytest.mark.slow
NOBODY = 65534
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_PROBE = """
import json, os, sys
got = []
for path in json.loads(sys.stdin.read()):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        got.append(path)
    except OSError:
        pass
print(json.dumps(got))
"""


def _as_nobody_can_read(paths: list[str]) -> list[str]:
    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    python = next(p for p in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable) if os.path.exists(p))
    p = subprocess.run([python, "-c", _PROBE], input=json.dumps(paths), capture_output=True, text=True, timeout=120,
                       preexec_fn=drop, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_nothing_the_platform_writes_is_readable_by_another_uid(tmp_path, corpus_df, tiny_teacher, monkeypatch):
    if os.geteuid() != 0:
        why = "reading as another uid needs root to switch to it (CI runs as root)"
        pytest.fail(why) if IN_CI else pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="mf-privacy-"))
    top.chmod(0o755)  # as a shared machine's /srv or /home would be: the protection must come from MF_HOME
    home = top / "home"
    monkeypatch.setenv("MF_HOME", str(home))
    monkeypatch.delenv("MF_DATABASE_URL", raising=False)
    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 30)
    spec = tmp_path / "order.yaml"
    spec.write_text(yaml.safe_dump(tiny_order("private", data, tiny_teacher)))
    r = run_mf("tenants", "add", "acme")
    assert r.returncode == 0, r.stderr
    r = run_mf("order", "run", str(spec), timeout=3600)  # minutes on a loaded machine
    assert r.returncode in (0, 3), r.stdout[-2000:] + r.stderr[-3000:]  # 3: a missed target, still a full run

    written = [home, *home.rglob("*")]
    kinds = {p.relative_to(home).parts[0] for p in written if p != home}
    assert {"mf.db", "artifacts", "orders"} <= kinds, kinds  # the run wrote what this test is about
    assert any(p.suffix in (".png", ".svg", ".html", ".md") for p in (home / "orders").rglob("*")), \
        sorted(p.name for p in (home / "orders").rglob("*"))
    open_to_others = [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in written
                      if p != home and not p.is_symlink() and p.lstat().st_mode & 0o077]
    assert not open_to_others, open_to_others  # dirs 0700, files 0600
    assert stat.S_IMODE(home.stat().st_mode) & 0o066 == 0  # MF_HOME itself: at most searchable (0711 for jobs)

    readable = _as_nobody_can_read([str(p) for p in written])
    assert readable == [], readable
