"""The deployment as written: Terraform is formatted and parses, and every name the code
expects (entry points, settings read from the environment, topics, queue, secrets) is what
Terraform and cloudbuild.yaml declare, and the other way round. No cloud, no provider
download: these read the files."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from conftest import ROOT
from talon.config import env_variables

TERRAFORM = ROOT / "terraform"
FUNCTIONS = sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "main.py").is_file())
# Read from the environment by Talon outside Settings (entrypoints, logging, bootstrap).
EXTRA_ENV = {"TALON_ADMIN_TOKEN", "TALON_LOG_FORMAT", "TALON_LOG_LEVEL"}
SETTINGS_ENV = {env for env, _, _ in env_variables()}
# What a cloud deployment must set (the rest keep their defaults).
REQUIRED_CLOUD_ENV = {
    "TALON_CONTROL_PLANE_DATABASE_INSTANCE_CONNECTION_NAME",
    "TALON_CONTROL_PLANE_DATABASE_NAME",
    "TALON_CONTROL_PLANE_DATABASE_USER",
    "TALON_CONTROL_PLANE_DATABASE_PASSWORD",
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER",
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT",
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC",
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC",
    "TALON_CONTROL_PLANE_SCHEDULER_BACKEND",
    "TALON_CONTROL_PLANE_SCHEDULER_PROJECT",
    "TALON_CONTROL_PLANE_SCHEDULER_LOCATION",
    "TALON_CONTROL_PLANE_SCHEDULER_QUEUE",
    "TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_URL",
    "TALON_CONTROL_PLANE_SCHEDULER_SERVICE_ACCOUNT_EMAIL",
    "TALON_WORKER_PULL_MODE",
}
REQUIRED_DISPATCH_ENV = {
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION",
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_AUDIENCE",
    "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_SERVICE_ACCOUNT_EMAIL",
}


def _tf_files() -> list[Path]:
    return sorted(TERRAFORM.rglob("*.tf"))


def _load(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle)


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _functions_module() -> dict[str, Any]:
    return _load(TERRAFORM / "modules" / "functions" / "main.tf")


def _locals(document: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in document.get("locals", []):
        merged.update(block)
    return merged


def _labels(mapping: dict[str, Any]) -> dict[str, Any]:
    """Block labels come quoted, beside parser metadata (`__is_block__`, `__comments__`)."""
    return {_unquote(k): v for k, v in mapping.items() if not k.startswith("__")}


def _resources(document: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for block in document.get("resource", []):
        for name, body in _labels(_labels(block).get(kind, {})).items():
            found[name] = body
    return found


def test_terraform_is_formatted() -> None:
    if shutil.which("terraform") is None:
        pytest.fail("terraform is needed for `terraform fmt -check` (see README, Tests)")
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_terraform_file_parses() -> None:
    files = _tf_files()
    assert len(files) >= 8
    for path in files:
        document = _load(path)
        assert document, path
    for tfvars in sorted((TERRAFORM / "environments").glob("*.tfvars")):
        with tfvars.open() as handle:
            values = hcl2.load(handle)
        assert set(values["functions"]) == set(FUNCTIONS), tfvars


def test_the_providers_are_pinned() -> None:
    document = _load(TERRAFORM / "versions.tf")
    providers = _labels(document["terraform"][0]["required_providers"][0])
    for name, spec in providers.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", _unquote(spec["version"])), (name, spec)


def test_entry_points_match_the_functions_folder() -> None:
    for name in FUNCTIONS:
        tree = ast.parse((ROOT / "functions" / name / "main.py").read_text())
        defined = {
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert name in defined, f"functions/{name}/main.py must define {name}()"
    entry_points = {k: _unquote(v) for k, v in _locals(_functions_module())["entry_points"].items()}
    assert entry_points == {name: name for name in FUNCTIONS}
    package_script = (ROOT / "scripts" / "package_functions.py").read_text()
    listed = re.search(r"FUNCTIONS = \(([^)]*)\)", package_script)
    assert listed is not None
    assert sorted(_unquote(s.strip()) for s in listed.group(1).split(",") if s.strip()) == [
        f'"{n}"'.strip('"') for n in FUNCTIONS
    ]


def _env_of(function: str) -> tuple[dict[str, str], dict[str, str]]:
    local = _locals(_functions_module())
    plain = {**local["common_env"], **local["env"][function]}
    return plain, local["secrets"][function]


def test_environment_names_are_settings_the_code_reads() -> None:
    for function in FUNCTIONS:
        plain, secrets = _env_of(function)
        for name in [*plain, *secrets]:
            if name.startswith("TALON_"):
                assert name in SETTINGS_ENV | EXTRA_ENV, f"{function}: {name} is read by nothing"
            else:
                assert name == "FUNCTION_USE_ASGI" and function == "ops_mcp", name
        names = set(plain) | set(secrets)
        missing = REQUIRED_CLOUD_ENV - names
        assert not missing, f"{function} lacks {sorted(missing)}"
    dispatch_plain, _ = _env_of("dispatch")
    assert set(dispatch_plain) >= REQUIRED_DISPATCH_ENV
    _, gateway_secrets = _env_of("gateway")
    assert "TALON_ADMIN_TOKEN" in gateway_secrets


def test_the_ops_mcp_function_allows_its_own_hosts() -> None:
    """DNS-rebinding protection stays on in the cloud: the function lists the host of the URL
    the gateway forwards to (httpx sends that Host) and its Cloud Run service's run.app host,
    and the gateway forwards to that same URL."""
    plain, _ = _env_of("ops_mcp")
    assert plain["TALON_GATEWAY_OPS_MCP_ALLOWED_HOSTS"] == '${join(",", local.ops_mcp_hosts)}'
    hosts = [_unquote(h) for h in _locals(_functions_module())["ops_mcp_hosts"]]
    assert hosts[0] == '${split("/", var.urls["ops_mcp"])[2]}'
    run_app = "${var.prefix}-ops-mcp-${data.google_project.this.number}.${var.region}.run.app"
    assert hosts[1] == run_app
    # ... where the service is named after the function: prefix-ops-mcp for ops_mcp.
    functions = _resources(_functions_module(), "google_cloudfunctions2_function")["talon"]
    assert _unquote(functions["name"]) == '${var.prefix}-${replace(each.key, "_", "-")}'
    gateway, _ = _env_of("gateway")
    assert gateway["TALON_GATEWAY_OPS_MCP_UPSTREAM"] == '${var.urls["ops_mcp"]}'


def test_topics_subscriptions_queue_and_secrets_are_wired() -> None:
    messaging = _load(TERRAFORM / "modules" / "messaging" / "main.tf")
    topics = _locals(messaging)["topics"]
    assert set(topics) == {"dispatch", "lifecycle"}
    push = _resources(messaging, "google_pubsub_subscription")["push"]
    assert _unquote(push["push_config"][0]["push_endpoint"]) == "${var.dispatch_url}"
    assert push["push_config"][0]["oidc_token"]
    plain, secrets = _env_of("dispatch")
    assert plain["TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC"] == '${var.topics["dispatch"]}'
    assert plain["TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC"] == (
        '${var.topics["lifecycle"]}'
    )
    assert plain["TALON_CONTROL_PLANE_SCHEDULER_QUEUE"] == "${var.queue}"
    root = _load(TERRAFORM / "main.tf")
    functions_call = next(
        _labels(m)["functions"] for m in root["module"] if "functions" in _labels(m)
    )
    assert functions_call["topics"] == "${module.messaging.topics}"
    assert functions_call["queue"] == "${module.scheduler.queue}"
    scheduler = _load(TERRAFORM / "modules" / "scheduler" / "main.tf")
    assert "scheduler" in _resources(scheduler, "google_cloud_tasks_queue")
    assert secrets["TALON_CONTROL_PLANE_DATABASE_PASSWORD"] == "${var.database.password_secret}"


def test_model_keys_are_readable_by_the_worker_alone() -> None:
    """Each model-key secret is granted to the dispatch account, secret by secret; no account
    has a project-wide Secret Manager role that would reach every secret."""
    functions = _load(TERRAFORM / "modules" / "functions" / "main.tf")
    grant = _resources(functions, "google_secret_manager_secret_iam_member")["model_keys"]
    assert grant["for_each"] == "${toset(var.model_key_secrets)}"
    assert _unquote(grant["member"]) == 'serviceAccount:${var.accounts["dispatch"]}'
    assert _unquote(grant["role"]) == "roles/secretmanager.secretAccessor"
    root = _load(TERRAFORM / "main.tf")
    functions_call = next(
        _labels(m)["functions"] for m in root["module"] if "functions" in _labels(m)
    )
    assert functions_call["model_key_secrets"] == "${var.model_key_secrets}"
    for path in _tf_files():
        for kind in ("google_project_iam_member", "google_project_iam_binding"):
            for name, body in _resources(_load(path), kind).items():
                assert "secretmanager" not in str(body.get("role")), (path, name)


def test_cloudbuild_tests_packages_and_applies_what_terraform_declares() -> None:
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    ids = [step["id"] for step in build["steps"]]
    assert ids == ["ui", "test", "package", "upload", "image", "image-build", "image-push",
                   "deploy"]  # fmt: skip
    steps = {step["id"]: step for step in build["steps"]}
    text = (ROOT / "cloudbuild.yaml").read_text()
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", text))
    assert used <= set(build["substitutions"]), used - set(build["substitutions"])
    assert "ensure_ui" in steps["ui"]["args"][1]  # the dashboard the gateway's zip carries
    assert "./scripts/test" in steps["test"]["args"][1]
    assert "scripts/package_functions.py" in steps["package"]["args"]
    deploy = steps["deploy"]["args"][1]
    for variable in ("project", "region", "source_bucket", "source_version"):
        assert f'-var="{variable}=' in deploy or f"-var={variable}=" in deploy, variable
    variables = _load(TERRAFORM / "variables.tf")["variable"]
    declared = {name for block in variables for name in _labels(block)}
    assert {"project", "region", "source_bucket", "source_version"} <= declared
    assert "environments/${_ENV}.tfvars" in deploy


def test_the_grpc_service_is_the_gateway_over_http2() -> None:
    """The gRPC Cloud Run service: the image Cloud Build pushes, cleartext HTTP/2 to the
    container (a port named h2c), gRPC health probes, and the gateway's account, environment
    and secrets (the same database and IAM wiring), public like the gateway."""
    module = _load(TERRAFORM / "modules" / "grpc" / "main.tf")
    service = _resources(module, "google_cloud_run_v2_service")["grpc"]
    template = service["template"][0]
    container = template["containers"][0]
    assert [(_unquote(p["name"]), p["container_port"]) for p in container["ports"]] == [
        ("h2c", 8080)]  # fmt: skip
    assert container["startup_probe"][0]["grpc"][0]["port"] == 8080
    assert template["service_account"] == "${var.service_account}"
    assert sorted(d['"env"']["for_each"] for d in container["dynamic"]) == [
        "${var.environment}", "${var.secrets}"]  # fmt: skip
    public = _resources(module, "google_cloud_run_v2_service_iam_member")["public"]
    assert _unquote(public["member"]) == "allUsers"

    root = _load(TERRAFORM / "main.tf")
    call = next(_labels(m)["grpc"] for m in root["module"] if "grpc" in _labels(m))
    assert call["service_account"] == '${module.iam.emails["gateway"]}'
    assert call["environment"] == "${module.functions.gateway_environment}"
    assert call["secrets"] == "${module.functions.gateway_secrets}"
    outputs = {_unquote(k): v for o in _functions_module()["output"] for k, v in o.items()}
    assert outputs["gateway_environment"]["value"] == (
        '${merge(local.common_env, local.env["gateway"])}')  # fmt: skip
    assert outputs["gateway_secrets"]["value"] == '${local.secrets["gateway"]}'

    # Terraform deploys the tag cloudbuild.yaml pushes.
    image = _unquote(call["image"])
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    steps = {step["id"]: step for step in build["steps"]}
    pushed = steps["image-push"]["args"][1]
    assert pushed in steps["image-build"]["args"]
    assert image.replace("${var.region}", "${_REGION}").replace(
        "${var.project}", "${PROJECT_ID}").replace("${local.prefix}", "talon-${_ENV}").replace(
        "${var.source_version}", "${_VERSION}") == pushed  # fmt: skip
    assert "grpc.Dockerfile" in steps["image-build"]["args"]
    assert "image-push" in steps["deploy"]["waitFor"]
    dockerfile = (ROOT / "grpc.Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert 'CMD ["python", "-m", "talon.grpc"]' in dockerfile
    function = _resources(_functions_module(), "google_cloudfunctions2_function")["talon"]
    version = _unquote(function["build_config"][0]["runtime"]).removeprefix("python")
    assert f"FROM python:{version[0]}.{version[1:]}-slim" in dockerfile  # the functions' Python


def test_packaged_functions_install_the_lock_with_hashes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_functions.py"), "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lock = (ROOT / "requirements.lock").read_text()
    for name in FUNCTIONS:
        with zipfile.ZipFile(tmp_path / f"{name}.zip") as archive:
            files = set(archive.namelist())
            assert {"main.py", "requirements.txt", "talon/entrypoints.py"} <= files, name
            requirements = archive.read("requirements.txt").decode()
        assert requirements == "--require-hashes\n" + lock, name
        # Only the gateway serves the dashboard.
        assert ("ui/dist/index.html" in files) == (name == "gateway"), name


def test_the_lock_is_resolved_for_the_functions_runtime() -> None:
    # Terraform's runtime `python312` and the packaging image are the Python the lock is for.
    function = _resources(_functions_module(), "google_cloudfunctions2_function")["talon"]
    runtime = _unquote(function["build_config"][0]["runtime"])
    match = re.fullmatch(r"python3(\d+)", runtime)
    assert match is not None, runtime
    version = f"3.{match.group(1)}"
    assert f"--python-version {version}" in (ROOT / "scripts" / "lock").read_text()
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    package = next(step for step in build["steps"] if step["id"] == "package")
    assert package["name"] == f"python:{version}-slim"
    header = (ROOT / "requirements.lock").read_text().splitlines()[:2]
    assert header[1] == "#    scripts/lock", header  # made by the script, with its options
