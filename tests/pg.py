"""A throwaway PostgreSQL for the tests: found (or, as root with apt, installed), started as an unprivileged user in
a temporary folder on a free 127.0.0.1 port with trust auth, one fresh database per test, removed at the end.

`start()` returns a `PgServer` or raises `Unavailable` with the reason, which the fixtures turn into a skip.
`MF_TEST_POSTGRES_URL` (an admin URL, e.g. a CI service container) uses that server instead of starting one;
`MF_TEST_PG_INSTALL=0` forbids the apt-get fallback.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_TIMEOUT_S = 60
START_TIMEOUT_S = 30


class Unavailable(Exception):
    """PostgreSQL cannot be had here; the message says why (it becomes the skip reason)."""


@dataclass
class PgServer:
    admin_url: str  # SQLAlchemy URL of the `postgres` maintenance database
    bindir: Path | None = None
    data: Path | None = None  # None: an external server we did not start
    user: pwd.struct_passwd | None = None  # the unprivileged user the server runs as (when we were root)
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str) -> str:
        from sqlalchemy import make_url

        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def _admin(self, sql: str) -> None:
        import psycopg
        from sqlalchemy import make_url

        conninfo = make_url(self.admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"mf_test_{os.getpid()}_{next(self._names)}"
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        from sqlalchemy import make_url

        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data is None or not self.data.exists():
            return
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], self.user,
             timeout=30, check=False)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _run(cmd: list[str], user: pwd.struct_passwd | None, *, timeout: float, check: bool = True,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    kw = {}
    if user is not None:  # we are root: drop to the server's user (initdb and postgres refuse to run as root)
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or "/", **kw)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise Unavailable(f"`{' '.join(cmd[:2])} ...` exited {proc.returncode}: {' | '.join(tail)}")
    return proc


def _version(bindir: Path) -> tuple[int, ...]:
    m = re.search(r"/postgresql/(\d+)/", str(bindir))
    return (int(m.group(1)),) if m else (0,)


def find_bindir() -> Path | None:
    """A folder with initdb, pg_ctl and postgres: $MF_TEST_PG_BINDIR, PATH, then the usual install places."""
    candidates: list[Path] = []
    if os.environ.get("MF_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["MF_TEST_PG_BINDIR"]))
    if shutil.which("initdb"):
        candidates.append(Path(os.path.realpath(shutil.which("initdb"))).parent)  # /usr/local/bin links here
    debian = sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), key=_version, reverse=True)
    candidates += debian + [Path(p) for p in ("/usr/pgsql/bin", "/usr/local/pgsql/bin", "/opt/homebrew/bin")]
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _install() -> str:
    """apt-get install postgresql (root only, bounded in time); returns what happened, for the skip reason."""
    if os.environ.get("MF_TEST_PG_INSTALL", "1") == "0":
        return "MF_TEST_PG_INSTALL=0 forbids installing it"
    if os.geteuid() != 0:
        return "not root, so not installing it with apt-get"
    if not shutil.which("apt-get"):
        return "no apt-get to install it with"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    for attempt in ("install", "update", "install"):
        left = deadline - time.monotonic()
        if left <= 1:
            return f"apt-get did not install postgresql within {INSTALL_TIMEOUT_S} s"
        try:
            proc = subprocess.run(cmd if attempt == "install" else ["apt-get", "update", "-q"], capture_output=True,
                                  text=True, timeout=left, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"apt-get {attempt} took over {INSTALL_TIMEOUT_S} s"
        if attempt == "install" and proc.returncode == 0:
            return "installed with apt-get"
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    return f"apt-get install postgresql failed: {last[0]}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves unless root; as root the `postgres` user, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable("running as root and there is neither a `postgres` nor a `nobody` user to run PostgreSQL as")


def _tmp_for(user: pwd.struct_passwd | None) -> str | None:
    """The temp folder, unless the server's user could not reach into it (a root-only TMPDIR): then /tmp."""
    tmp = Path(tempfile.gettempdir()).resolve()
    if user is None or all(d.stat().st_mode & 0o001 for d in (tmp, *tmp.parents)):
        return None
    return "/tmp"


def start() -> PgServer:
    if os.environ.get("MF_TEST_POSTGRES_URL"):
        from modelfactory.store import database_url

        server = PgServer(admin_url=database_url(os.environ["MF_TEST_POSTGRES_URL"]))
        try:
            server._admin("SELECT 1")
        except Exception as e:  # any failure to connect is the reason to report
            raise Unavailable(f"MF_TEST_POSTGRES_URL does not answer: {e}") from e
        return server
    if importlib.util.find_spec("psycopg") is None:
        raise Unavailable("the psycopg driver is not installed (pip install -r requirements.txt)")
    bindir = find_bindir()
    if bindir is None:
        what = _install()
        bindir = find_bindir()
        if bindir is None:
            raise Unavailable(f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; {what}")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="mf-pg-", dir=_tmp_for(user)))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    server = PgServer(admin_url="", bindir=bindir, data=data, user=user)
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
              "--no-sync"], user, timeout=120, cwd=root)
        for attempt in range(3):  # the free port can be taken between choosing and binding it
            port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='{root}' "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            proc = _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                         "-t", str(START_TIMEOUT_S), "-o", opts, "start"], user, timeout=START_TIMEOUT_S + 10,
                        cwd=root, check=False)
            if proc.returncode == 0:
                break
            log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
            if "could not bind" not in log or attempt == 2:
                raise Unavailable(f"pg_ctl start failed: {' | '.join(log.strip().splitlines()[-3:])}")
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    server.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    atexit.register(server.stop)  # in case the session ends without running its finalizers
    return server
