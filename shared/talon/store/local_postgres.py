"""A private PostgreSQL cluster in a folder, for `talon dev` and the test suite.

Uses initdb/pg_ctl from PATH (or /usr/lib/postgresql/*/bin); when those are missing, the
optional `pgserver` wheel, which bundles PostgreSQL 16. initdb refuses to run as root, so as
root the cluster runs as the unprivileged `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pg8000.dbapi

from talon.errors import TalonError

SUPERUSER = "talon"


class LocalPostgresError(TalonError):
    code = "local_postgres"


def find_pg_bin() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    def __init__(
        self, root: Path | str, *, durable: bool = True, options: dict[str, str] | None = None
    ) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.durable = durable
        self.options = options or {}  # extra server settings (`-c name=value`)
        self.port: int | None = None
        self._pgserver = None
        self._bin = find_pg_bin()
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def password(self) -> str:
        return (self.root / "password").read_text().strip()

    def start(self) -> None:
        if self._bin is None:
            self._start_pgserver()
            return
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        running_port = self._running_port()
        if running_port is not None:
            self.port = running_port
            return
        self.port = free_port()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
        )
        if not self.durable:
            # Throwaway test clusters: losing data on an OS crash is fine, speed is not.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        options += "".join(f" -c {name}={value}" for name, value in self.options.items())
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        if self._pgserver is not None:
            self._pgserver.cleanup()
            return
        if self._bin is not None and (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        if self._pgserver is not None:
            return self._pgserver.get_uri(database)
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{database}"
        )

    def connect(self, database: str = "postgres") -> pg8000.dbapi.Connection:
        from talon.store.connect import connector_from_url

        return connector_from_url(self.url(database), 10)()

    def ensure_database(self, name: str, template: str | None = None) -> None:
        conn = self.connect()
        conn.autocommit = True
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                suffix = f' TEMPLATE "{template}"' if template else ""
                cur.execute(f'CREATE DATABASE "{name}"{suffix}')
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        conn = self.connect()
        conn.autocommit = True
        try:
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    # -- internals ---------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "password"
        if not password_file.exists():
            password_file.write_text(secrets.token_urlsafe(24) + "\n")
        password_file.chmod(0o600)
        if self._run_as is not None:
            _chown_tree(self.root, self._run_as)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        )

    def _running_port(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return None
        status = self._pg("pg_ctl", "-D", str(self.data), "status", check=False)
        if status.returncode != 0:
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 else None

    def _pg(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        command = [str(self._bin / program), *args]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        # Output goes to a file, not a pipe: the server that `pg_ctl start` forks inherits the
        # descriptors, and a pipe would then never reach EOF.
        with tempfile.TemporaryFile(mode="w+") as output:
            process = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd="/"
            )
            output.seek(0)
            result = subprocess.CompletedProcess(command, process.returncode, output.read(), "")
        if check and result.returncode != 0:
            log_tail = ""
            log_file = self.root / "server.log"
            if log_file.exists():
                log_tail = "\n".join(log_file.read_text().splitlines()[-10:])
            raise LocalPostgresError(
                f"{program} failed ({result.returncode}): {result.stdout.strip()}\n{log_tail}"
            )
        return result

    def _start_pgserver(self) -> None:
        try:
            import pgserver
        except ImportError as exc:
            raise LocalPostgresError(
                "no PostgreSQL found: install PostgreSQL (initdb and pg_ctl on PATH) "
                "or `pip install 'talon[local-pg]'` for the bundled pgserver build"
            ) from exc
        self.root.mkdir(parents=True, exist_ok=True)
        self._pgserver = pgserver.get_server(str(self.data), cleanup_mode="stop")


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise LocalPostgresError("running as root needs a 'postgres' user to own the cluster")


def _chown_tree(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for path in [root, *root.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    # The server must be able to reach its folder through every parent.
    for parent in root.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise LocalPostgresError(
                f"{parent} is not searchable by user {user}; choose a data dir elsewhere"
            )


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")
