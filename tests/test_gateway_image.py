"""The gateway image's command, run without Docker (these machines have none): the packaged
gateway function (scripts/package_functions.py's gateway.zip, what the Cloud Run function
deploys) unpacked as gateway.Dockerfile unpacks it, then started exactly as the Dockerfile's
WORKDIR, ENV and CMD say (`python -m talon.serve`, FUNCTION_TARGET=gateway,
FUNCTION_SOURCE=/app/main.py, PYTHONPATH=/app, with /app the unpacked folder). The test
venv's interpreter stands in for the image's Python with the lock pip-installed; the port is
a free one on loopback instead of 8080 on every interface; the database and the tenancy that
lets the example manifests apply are the tests' (tests/data/talon-test.yaml)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN, ROOT, TEMPLATE_DB, TEST_CONFIG, Cluster
from talon.cli.manifest_files import read_documents
from talon.store.local_postgres import free_port

DOCKERFILE = ROOT / "gateway.Dockerfile"
BASE = "/v1/ns/acme/agents/customer-support/sessions"


@dataclass(frozen=True)
class _Image:
    workdir: str
    env: dict[str, str]
    cmd: list[str]
    package: str  # the zip COPY takes from the build context


def _image() -> _Image:
    text = DOCKERFILE.read_text()
    workdir = re.search(r"^WORKDIR (\S+)$", text, re.M)
    env = re.search(r"^ENV (.+)$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    copy = re.search(r"^COPY (\S+\.zip) ", text, re.M)
    assert workdir and env and cmd and copy, "gateway.Dockerfile: WORKDIR, ENV, CMD, COPY"
    pairs = dict(item.split("=", 1) for item in shlex.split(env.group(1)))
    return _Image(workdir.group(1), pairs, json.loads(cmd.group(1)), copy.group(1))


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/functions/gateway.zip as cloudbuild.yaml's package step makes it, unpacked the
    way the Dockerfile's RUN does (`python -m zipfile -e`)."""
    image = _image()
    assert image.package == "dist/functions/gateway.zip"
    out = tmp_path_factory.mktemp("dist") / "functions"
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_functions.py"), "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert re.search(rf"python -m zipfile -e \S+ {image.workdir}\b", DOCKERFILE.read_text())
    app = tmp_path_factory.mktemp("app")
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(out / "gateway.zip"), str(app)],
                   check=True)  # fmt: skip
    return app


def _serve_env(image: _Image, app: Path, port: int, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TALON_", "FUNCTION_", "PYTHON"))}  # fmt: skip
    env |= {k: v.replace(image.workdir, str(app)) for k, v in image.env.items()}
    return env | {"PORT": str(port), "HOST": "127.0.0.1",
                  "TALON_CONTROL_PLANE_DATABASE_URL": database_url,
                  "TALON_ADMIN_TOKEN": ADMIN_TOKEN,
                  "TALON_CONFIG": str(TEST_CONFIG)}  # fmt: skip


@pytest.fixture(scope="module")
def served(
    unpacked: Path, cluster: Cluster, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    image = _image()
    name = f"talon_gateway_image_{os.getpid()}"
    url = cluster.create(name, template=TEMPLATE_DB)
    port = free_port()
    env = _serve_env(image, unpacked, port, url)
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    command = [sys.executable if image.cmd[0] == "python" else image.cmd[0], *image.cmd[1:]]
    process = subprocess.Popen(
        command, cwd=unpacked, env=env,
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/healthz").status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the unpacked gateway did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield http
    finally:
        http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        cluster.drop(name)


def test_the_image_serves_the_packaged_gateway_not_the_checkout(unpacked: Path) -> None:
    """With the image's environment, `talon` is the zip's copy (PYTHONPATH), and the entry
    point is the zip's main.py."""
    image = _image()
    assert image.cmd == ["python", "-m", "talon.serve"]
    assert image.env["FUNCTION_TARGET"] == "gateway"
    assert image.env["FUNCTION_SOURCE"] == f"{image.workdir}/main.py"
    env = _serve_env(image, unpacked, 0, "postgresql://unused")
    found = subprocess.run(
        [sys.executable, "-c", "import talon, talon.serve; print(talon.__file__)"],
        cwd=unpacked, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(found.stdout.strip()).resolve() == (unpacked / "talon" / "__init__.py").resolve()
    assert (unpacked / "main.py").read_text() == (
        ROOT / "functions" / "gateway" / "main.py").read_text()  # fmt: skip
    assert (unpacked / "ui" / "dist" / "index.html").is_file()


def test_the_unpacked_gateway_answers_healthz_and_serves_a_stream(served: httpx.Client) -> None:
    assert served.get("/healthz").json() == {"status": "ok"}
    assert served.get("/ui/").status_code == 200  # the dashboard, from the zip's ui/dist
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    applied = served.post("/v1/apply", json={"items": documents}, timeout=30)
    assert applied.status_code == 200, applied.text
    created = served.post(BASE, json={})
    assert created.status_code == 201, created.text
    session = created.json()["id"]
    with served.stream("GET", f"{BASE}/{session}/stream", params={"heartbeat": 1}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        head = itertools.islice(stream.iter_lines(), 20)
        assert any(line.startswith("retry:") for line in head)
