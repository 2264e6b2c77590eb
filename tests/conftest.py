"""Shared fixtures: a real PostgreSQL cluster, a migrated template database cloned per test,
and the gateway function served over real HTTP by functions-framework's Flask app."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import functions_framework
import httpx
import pg8000.dbapi
import pytest
from werkzeug.serving import make_server

from talon import entrypoints
from talon.config import Settings, load_settings
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.local_postgres import LocalPostgres
from talon.store.migrate import migrate
from talon.tenancy.tenant_policy import TenancyPolicy

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token-0123456789"
TEMPLATE_DB = "talon_test_template"
_counter = itertools.count()


# Fixtures whose use makes a test slow by nature: PostgreSQL, the emulators, a browser. A
# test marked `fast` may not ask for them, even indirectly (checked at collection).
_HEAVY_FIXTURES = frozenset({"cluster", "pubsub_emulator", "tasks_emulator", "browser"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-openapi",
        action="store_true",
        help="write the OpenAPI document the gateway serves to tests/data/openapi.json "
        "instead of comparing them (test_openapi.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("fast") is None:
            continue
        heavy = sorted(_HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())))
        if heavy or item.get_closest_marker("slow") is not None:
            raise pytest.UsageError(
                f"{item.nodeid} is marked fast but needs {', '.join(heavy) or 'the slow mark'}"
            )


class Cluster:
    """Creates and drops databases on one server (ours, or $TALON_TEST_DATABASE_URL's)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def url_for(self, database: str) -> str:
        return urlunparse(urlparse(self.url)._replace(path=f"/{database}"))

    def admin(self, sql: str) -> None:
        connection = connector_from_url(self.url, 10)()
        connection.autocommit = True
        try:
            connection.cursor().execute(sql)
        finally:
            connection.close()

    def create(self, name: str, template: str | None = None) -> str:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        suffix = f' TEMPLATE "{template}"' if template else ""
        self.admin(f'CREATE DATABASE "{name}"{suffix}')
        return self.url_for(name)

    def drop(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("TALON_TEST_DATABASE_URL")
    if external:
        yield Cluster(external)
        return
    # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="talon-test-pg-"))
    server = LocalPostgres(root, durable=False)
    server.start()
    try:
        yield Cluster(server.url("postgres"))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(cluster: Cluster) -> str:
    url = cluster.create(TEMPLATE_DB)
    db = Database(connector_from_url(url, 10), 1)
    try:
        migrate(db)
    finally:
        db.close()
    return url


@pytest.fixture
def database_url(cluster: Cluster, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test (a cheap copy of the template)."""
    name = f"talon_test_{os.getpid()}_{next(_counter)}"
    url = cluster.create(name, template=TEMPLATE_DB)
    yield url
    cluster.drop(name)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(connector_from_url(database_url, 10), 4)
    yield database
    database.close()


def raw_connection(url: str) -> pg8000.dbapi.Connection:
    return connector_from_url(url, 10)()


TEST_CONFIG = ROOT / "tests" / "data" / "talon-test.yaml"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The test configuration (tests/data/talon-test.yaml) on this test's database."""
    return load_settings(TEST_CONFIG, environ={"TALON_CONTROL_PLANE_DATABASE_URL": database_url})


def tenancy_for_tests() -> TenancyPolicy:
    """The tests' tenancy policy (loopback servers over http, acme's grants)."""
    return TenancyPolicy.from_settings(load_settings(TEST_CONFIG, environ={}).tenancy)


def worker_for_tests(db: Database, **options: Any) -> Any:
    """A worker on `db`, wired as `Services.worker` wires one, under the tests' policy."""
    from talon.runtime.worker import Worker
    from talon.services import resource_service

    tenancy = tenancy_for_tests()
    return Worker(db, tenancy=tenancy, resources=resource_service(db, tenancy), **options)


# --- the gateway over HTTP -------------------------------------------------------------------


class _Server:
    def __init__(self, target: str = "gateway") -> None:
        app = functions_framework.create_app(
            target=target, source=str(ROOT / "functions" / target / "main.py")
        )
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def http_server() -> Iterator[_Server]:
    server = _Server()
    yield server
    server.close()


@pytest.fixture(scope="session")
def dispatch_server() -> Iterator[_Server]:
    """The dispatch function (Pub/Sub push endpoint) over real HTTP."""
    server = _Server("dispatch")
    yield server
    server.close()


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    from talon.store.local_postgres import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def ops_server() -> Iterator[str]:
    """The ops_mcp function (functions-framework, ASGI) served by uvicorn; yields the talon-ops
    MCP URL. It builds its app from `entrypoints`, so it follows each test's settings."""
    import functions_framework.aio

    app = functions_framework.aio.create_asgi_app(
        target="ops_mcp", source=str(ROOT / "functions" / "ops_mcp" / "main.py")
    )
    with serve_asgi(app) as base:
        yield f"{base}/mcp/talon-ops"


@contextlib.contextmanager
def _emulator(name: str, command: list[str], port: int) -> Iterator[str]:
    """Run an emulator in its own process group until the block ends; yield host:port."""
    import signal
    import subprocess

    from talon.store.local_postgres import wait_for_port

    log_file = open(Path(tempfile.gettempdir()) / f"talon-{name}-{port}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log_file.close()


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """The gcloud Pub/Sub emulator on a free port; yields its host:port."""
    from talon.store.local_postgres import free_port

    if shutil.which("gcloud") is None:
        pytest.fail("gcloud (with the Pub/Sub emulator) is needed; see README, Tests")
    port = free_port()
    command = ["gcloud", "beta", "emulators", "pubsub", "start",
               f"--host-port=127.0.0.1:{port}", "--project=talon-test", "--quiet"]  # fmt: skip
    with _emulator("pubsub", command, port) as host:
        yield host


@pytest.fixture(scope="session")
def scheduler_server() -> Iterator[_Server]:
    """The scheduler function (Cloud Tasks callback) over real HTTP."""
    server = _Server("scheduler")
    yield server
    server.close()


@pytest.fixture(scope="session")
def tasks_emulator() -> Iterator[str]:
    """PyPI's Cloud Tasks emulator (own virtualenv, see scripts/setup.sh) on a free port."""
    from talon.store.local_postgres import free_port

    binary = ROOT / ".venv-tasks-emulator" / "bin" / "gcloud-tasks-emulator"
    if not binary.exists():
        pytest.fail("the Cloud Tasks emulator is missing: run ./scripts/test (see README, Tests)")
    port = free_port()
    with _emulator("tasks", [str(binary), "start", "--port", str(port)], port) as host:
        yield host


class Api:
    """An httpx client with a token, plus helpers that keep tests short."""

    def __init__(self, base_url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30)
        self.base_url = base_url

    def as_token(self, token: str | None) -> Api:
        return Api(self.base_url, token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)

    def ok(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == expect, (response.status_code, response.text)
        return response.json()

    def token(self, role: str = "read", namespaces: list[str] | None = None) -> str:
        body = {"name": f"t-{next(_counter)}", "role": role, "namespaces": namespaces or ["*"]}
        return self.ok("POST", "/v1/tokens", 201, json=body)["token"]


@pytest.fixture
def gateway_url(
    http_server: _Server, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The session's gateway, re-pointed at this test's database."""
    monkeypatch.setenv("TALON_CONTROL_PLANE_DATABASE_URL", database_url)
    monkeypatch.setenv("TALON_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("TALON_CONFIG", str(TEST_CONFIG))
    entrypoints.reset()
    yield http_server.url
    entrypoints.reset()


@pytest.fixture
def api(gateway_url: str) -> Iterator[Api]:
    client = Api(gateway_url, ADMIN_TOKEN)
    yield client
    client.http.close()


@pytest.fixture
def acme(api: Api) -> Api:
    """The example manifests applied, as `talon dev` does on first start."""
    from talon.cli.manifest_files import read_documents

    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    api.ok("POST", "/v1/apply", json={"items": documents})
    return api


# --- sessions: a worker, a model server, SSE ------------------------------------------------


@pytest.fixture
def model_server() -> Iterator[Any]:
    from model_server import ModelServer

    server = ModelServer()
    yield server
    server.close()
    # Whatever Talon sent that the real API would refuse fails the test that sent it (a test
    # that provokes a refusal on purpose clears `refused` after checking it).
    assert not server.refused, f"the real API would refuse Talon's request: {server.refused}"
    assert not server.script_errors, server.script_errors


@pytest.fixture
def secret_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A local Secret Manager that this process's Google credentials and Talon point at."""
    from secret_manager_server import SecretManagerServer
    from talon.runtime.secrets import forget_cached_secrets

    server = SecretManagerServer()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(server.credentials_file(tmp_path)))
    monkeypatch.setenv("TALON_SECRET_MANAGER_ENDPOINT", server.url)
    forget_cached_secrets()
    yield server
    forget_cached_secrets()
    server.close()


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Any]:
    """Start in-process pull workers on this test's database (stopped at teardown)."""
    import logging

    from talon.services import Services

    running: list[tuple[threading.Event, threading.Thread, Any]] = []
    crashes: list[BaseException] = []

    class _Errors(logging.Handler):
        """Worker errors (a failed handler, a deadlock) fail the test even if a retry hid them."""

        def __init__(self) -> None:
            super().__init__(logging.ERROR)
            self.records: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            # Only the workers' threads (all named talon-*): the in-process gateway's request
            # threads may still be serving a previous test's stream against its dropped
            # database, and their errors are not this worker's.
            if record.threadName.startswith("talon-"):
                self.records.append(self.format(record))

    errors = _Errors()
    talon_logger = logging.getLogger("talon")
    talon_logger.addHandler(errors)

    def run(worker: Any, stop: threading.Event) -> None:
        try:
            worker.run_pull(stop, concurrency=2)
        except BaseException as exc:
            crashes.append(exc)
            raise

    def start(*, tools: Any = None, demo_fallback: bool = False, lease_seconds: float = 5.0):
        services = Services.start(settings)
        worker = services.worker(tools=tools, demo_fallback=demo_fallback,
                                 lease_seconds=lease_seconds)  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(worker, stop), daemon=True,
                                  name="talon-test-worker")  # fmt: skip
        thread.start()
        running.append((stop, thread, services))
        return worker

    yield start
    for stop, thread, services in running:
        stop.set()
        thread.join(timeout=30)
        services.close()
    talon_logger.removeHandler(errors)
    assert crashes == [], crashes
    assert errors.records == [], errors.records


def row_counts(db: Database, tables: list[str], session_uid: Any = None) -> dict[str, int]:
    """How many rows each table holds (of one session when `session_uid` is given)."""
    where, params = (" WHERE session_uid = %s", (session_uid,)) if session_uid else ("", None)
    with db.transaction() as tx:
        return {t: int(tx.scalar(f"SELECT count(*) FROM {t}{where}", params)) for t in tables}


def read_stream(
    api: Api,
    path: str,
    *,
    last_event_id: int | None = None,
    params: dict[str, Any] | None = None,
    timeout: float = 30,
    max_events: int | None = None,
) -> list[dict[str, Any]]:
    """Read an SSE stream until the server ends it (or `max_events` arrive)."""

    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    received: list[dict[str, Any]] = []
    with api.http.stream("GET", path, params=params, headers=headers, timeout=timeout) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        for event in sse_events(reply.iter_lines()):
            received.append(event)
            if max_events is not None and len(received) >= max_events:
                break
    return received


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The session events of an SSE body's lines, each checked against its `id:` and
    `event:` fields."""
    import json

    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                event = json.loads(fields["data"])
                assert str(event["id"]) == fields["id"] and event["type"] == fields["event"]
                yield event
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
