"""One Settings for every MF_* variable: nothing else reads them, each is documented in the README's table, and a
value that does not parse is one clear error naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelfactory.config import VARIABLES, settings
from modelfactory.errors import MFError

ROOT = Path(__file__).resolve().parent.parent
READS = re.compile(r"""(?:environ\.get|getenv)\(\s*["']MF_|environ\[\s*["']MF_[A-Z_]+["']\s*\](?!\s*=[^=])""")


def test_only_config_reads_mf_variables():
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for p in sorted((ROOT / "modelfactory").rglob("*.py")) if p.name != "config.py"
                 for i, line in enumerate(p.read_text().splitlines(), start=1) if READS.search(line)]
    assert offenders == []


def test_every_variable_is_in_the_readme_settings_table():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Settings\n"):]
    section = section[:section.index("\n## ", 1)]
    documented = set(re.findall(r"^\| `(MF_[A-Z_]+)` \|", section, flags=re.M))
    assert documented == set(VARIABLES)


def test_values_are_parsed_and_a_bad_one_names_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MF_HOME", str(tmp_path))
    monkeypatch.delenv("MF_DATABASE_URL", raising=False)
    monkeypatch.setenv("MF_PREEMPT_MIN_RUNTIME_S", "0")
    monkeypatch.setenv("MF_SERVE_AUTH", "yes")
    monkeypatch.setenv("MF_MAX_KEYS_PER_TENANT", "3")
    s = settings()
    assert (s.home, s.database_url) == (tmp_path, f"sqlite:///{tmp_path / 'mf.db'}")
    assert (s.min_runtime_s, s.serve_auth, s.max_keys_per_tenant, s.pool_policy) == (0.0, True, 3, "fifo")
    monkeypatch.setenv("MF_JOB_DISK_GB", "0")
    with pytest.raises(MFError, match="MF_JOB_DISK_GB='0': expected a positive number"):
        settings()
    monkeypatch.setenv("MF_JOB_DISK_GB", "2")
    monkeypatch.setenv("MF_PRICE_CPU_HOUR", "cheap")
    with pytest.raises(MFError, match="MF_PRICE_CPU_HOUR='cheap': expected a number"):
        settings()
