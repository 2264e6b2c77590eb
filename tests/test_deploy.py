"""The deployment as written: Terraform is formatted and parses, and every name the code
expects (entry points, settings read from the environment, topics, queue, secrets) is what
Terraform and cloudbuild.yaml declare, and the other way round. No cloud, no provider
download: these read the files (and have `terraform console` evaluate the modules' own
expressions where the wiring depends on a variable: gateway_server)."""

from __future__ import annotations

import ast
import json
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
# OpenTelemetry's own variables, read by the SDK (talon/telemetry/setup.py).
TRACING_ENV = {
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_METRICS_EXPORTER",
}
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
            elif name.startswith("OTEL_"):
                assert name in TRACING_ENV, f"{function}: {name} is no OpenTelemetry setting"
            else:
                assert (name == "FUNCTION_USE_ASGI" and function == "ops_mcp") or (
                    name == "GOOGLE_CLOUD_PROJECT"), name  # fmt: skip
        assert set(plain) >= TRACING_ENV, f"{function} does not export traces"
        names = set(plain) | set(secrets)
        missing = REQUIRED_CLOUD_ENV - names
        assert not missing, f"{function} lacks {sorted(missing)}"
    dispatch_plain, _ = _env_of("dispatch")
    assert set(dispatch_plain) >= REQUIRED_DISPATCH_ENV
    _, gateway_secrets = _env_of("gateway")
    assert "TALON_ADMIN_TOKEN" in gateway_secrets


def test_the_gateway_serves_as_many_requests_at_once_as_cloud_run_sends_it() -> None:
    """THREADS (functions-framework's gunicorn) follows the gateway's concurrency: the caps on
    unauthenticated requests and open streams are shares of it (README: Request limits)."""
    module = _functions_module()
    assert _locals(module)["server_env"] == {
        "gateway": {"THREADS": '${tostring(var.scaling["gateway"].concurrency)}'}}  # fmt: skip
    function = _resources(module, "google_cloudfunctions2_function")["talon"]
    assert function["service_config"][0]["environment_variables"] == (
        "${merge(local.common_env, local.env[each.key], "
        "lookup(local.server_env, each.key, {}))}")  # fmt: skip


def test_every_function_exports_traces_to_cloud_trace_with_its_own_role() -> None:
    from talon.telemetry.setup import exporter_names

    env = _locals(_functions_module())["common_env"]
    plain = {k: _unquote(v) for k, v in env.items()}
    assert exporter_names(plain) == ["gcp_trace"]
    assert exporter_names(plain, signal="metrics") == ["gcp_monitoring"]
    # A sampler the SDK knows, with its ratio from the root variable.
    assert _unquote(env["OTEL_TRACES_SAMPLER"]) == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "${tostring(var.trace_sample_ratio)}"
    iam = _load(TERRAFORM / "modules" / "iam" / "main.tf")
    agent = _resources(iam, "google_project_iam_member")["trace_agent"]
    assert agent["for_each"] == "${toset(local.functions)}"
    assert _unquote(agent["role"]) == "roles/cloudtrace.agent"
    writer = _resources(iam, "google_project_iam_member")["metric_writer"]
    assert writer["for_each"] == "${toset(local.functions)}"
    assert _unquote(writer["role"]) == "roles/monitoring.metricWriter"


def test_the_dashboard_and_alerts_watch_metrics_talon_records() -> None:
    """Every metric the dashboard charts or an alert watches is one Talon records (the names
    in talon/telemetry/metrics.py and the gauges of Services.report_gauges)."""
    recorded = set(re.findall(r'"(talon\.[a-z_.]+)"', "\n".join(
        (ROOT / "shared" / "talon" / p).read_text()
        for p in ("telemetry/metrics.py", "services.py")
    )))  # fmt: skip
    text = (TERRAFORM / "modules" / "observability" / "main.tf").read_text()
    watched = set(re.findall(r"talon\.[a-z_.]+[a-z]", text))
    assert watched and watched <= recorded, watched - recorded
    document = _load(TERRAFORM / "modules" / "observability" / "main.tf")
    alerts = _resources(document, "google_monitoring_alert_policy")
    assert set(alerts) == {"turn_failures", "outbox_age", "schedule_lateness"}
    assert "google_monitoring_dashboard" in {
        kind for block in document["resource"] for kind in _labels(block)
    }


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
    assert ids == ["ui", "test", "package", "upload", "registry", "image-build", "image-push",
                   "worker-image", "gateway-image", "deploy"]  # fmt: skip
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
    # The pull worker's image: built from Dockerfile.worker, pushed, and handed to Terraform.
    image = "${_REGION}-docker.pkg.dev/${PROJECT_ID}/talon-${_ENV}/worker:${_VERSION}"
    build_script = steps["worker-image"]["args"][1]
    assert f"docker build -f Dockerfile.worker -t {image} ." in build_script
    assert f"docker push {image}" in build_script
    assert f'-var="worker_image={image}"' in deploy and "worker_image" in declared
    assert set(steps["deploy"]["waitFor"]) == {"upload", "image-push", "worker-image",
                                               "gateway-image"}  # fmt: skip
    assert "talon-${_ENV}" in steps["registry"]["args"][1]  # the repository both images use


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


# --- pull mode (worker_mode = "pull") --------------------------------------------------------


def _worker_module() -> dict[str, Any]:
    return _load(TERRAFORM / "modules" / "worker" / "main.tf")


def _variable(name: str) -> dict[str, Any]:
    for block in _load(TERRAFORM / "variables.tf")["variable"]:
        if name in _labels(block):
            return dict(_labels(block)[name])
    raise AssertionError(f"variable {name} is not declared")


def _module_call(name: str) -> dict[str, Any]:
    root = _load(TERRAFORM / "main.tf")
    return dict(next(_labels(m)[name] for m in root["module"] if name in _labels(m)))


def test_worker_mode_selects_push_or_pull_and_dead_letters_count_the_same() -> None:
    mode = _variable("worker_mode")
    assert _unquote(mode["default"]) == "push"
    assert 'contains(["push", "pull"], var.worker_mode)' in mode["validation"][0]["condition"]
    attempts = _variable("max_delivery_attempts")
    condition = attempts["validation"][0]["condition"]
    assert ">= 5" in condition and "<= 100" in condition  # what Pub/Sub accepts
    messaging = _load(TERRAFORM / "modules" / "messaging" / "main.tf")
    subscriptions = _resources(messaging, "google_pubsub_subscription")
    assert subscriptions["push"]["for_each"] == '${var.worker_mode == "push" ? local.topics : {}}'
    assert subscriptions["pull"]["for_each"] == '${var.worker_mode == "pull" ? local.topics : {}}'
    for kind in ("push", "pull"):
        policy = subscriptions[kind]["dead_letter_policy"][0]
        assert policy["max_delivery_attempts"] == "${var.max_delivery_attempts}", kind
        assert policy["dead_letter_topic"] == "${google_pubsub_topic.dead_letter[each.key].id}"
        assert subscriptions[kind]["retry_policy"], kind
    assert "push_config" not in subscriptions["pull"]
    # Pub/Sub's service agent may publish to the dead-letter topics and subscribe to whichever
    # subscriptions forward to them.
    agent = _resources(messaging, "google_pubsub_subscription_iam_member")
    assert agent["dead_letter_subscriber"]["subscription"] == "${local.sources[each.key]}"
    assert agent["dead_letter_subscriber"]["member"] == "${local.pubsub_agent}"
    publisher = _resources(messaging, "google_pubsub_topic_iam_member")["dead_letter_publisher"]
    assert publisher["member"] == "${local.pubsub_agent}"
    # The dispatch dead letters reach the worker code in both modes: pushed to dispatch...
    dead = subscriptions["dead_letter"]
    push = _labels(dead["dynamic"][0])["push_config"]
    assert push["for_each"] == '${each.key == "dispatch" && var.worker_mode == "push" ? [1] : []}'
    # ... or pulled by the worker, which may read exactly its three subscriptions.
    worker_grant = agent["worker"]
    assert _unquote(worker_grant["role"]) == "roles/pubsub.subscriber"
    assert worker_grant["member"] == "${var.worker_member}"
    assert "dispatch-dead-letter" in worker_grant["for_each"]
    call = _module_call("messaging")
    assert call["worker_mode"] == "${var.worker_mode}"
    assert call["max_delivery_attempts"] == "${var.max_delivery_attempts}"


def test_the_pull_worker_runs_talon_worker_with_cpu_always_allocated_and_no_invokers() -> None:
    worker = _worker_module()
    service = _resources(worker, "google_cloud_run_v2_service")["worker"]
    assert service["count"] == "${var.enabled ? 1 : 0}"
    assert _unquote(service["ingress"]) == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    template = service["template"][0]
    scaling = template["scaling"][0]
    assert scaling["min_instance_count"] == scaling["max_instance_count"]
    container = template["containers"][0]
    assert [_unquote(a) for a in container["args"][:2]] == ["worker", "--concurrency"]
    assert container["resources"][0]["cpu_idle"] is False  # CPU always allocated
    assert _unquote(container["startup_probe"][0]["http_get"][0]["path"]) == "/healthz"
    assert _module_call("worker")["enabled"] == "${local.pull}"
    # Nobody may invoke it: no run.invoker grant on it anywhere (the Cloud Run service grants
    # there are, are the public gRPC service's and gateway service's, each on itself).
    own = {"grpc": "grpc", "gateway_service": "gateway"}
    for path in _tf_files():
        text = path.read_text()
        if path.parent.name in own:
            grants = _resources(_load(path), "google_cloud_run_v2_service_iam_member")
            assert [g["name"] for g in grants.values()] == [
                f"${{google_cloud_run_v2_service.{own[path.parent.name]}.name}}"]  # fmt: skip
            continue
        assert "google_cloud_run_v2_service_iam" not in text, path
    # Its own account, granted only what a turn needs.
    grants = {
        (kind, name)
        for kind in ("google_project_iam_member", "google_secret_manager_secret_iam_member")
        for name in _resources(worker, kind)
    }  # fmt: skip
    assert grants == {("google_project_iam_member", "sql_client"),
                      ("google_project_iam_member", "telemetry"),
                      ("google_secret_manager_secret_iam_member", "mcp_headers"),
                      ("google_secret_manager_secret_iam_member", "model_keys")}  # fmt: skip
    assert _unquote(_resources(worker, "google_project_iam_member")["sql_client"]["role"]) == (
        "roles/cloudsql.client"
    )


def test_the_pull_workers_environment_is_settings_the_code_reads() -> None:
    worker = _locals(_worker_module())
    assert worker["env"] == "${merge(var.common_env, local.pull_env)}"
    assert _module_call("worker")["common_env"] == "${module.functions.common_env}"
    outputs = _labels(_functions_module()["output"][0]) | _labels(_functions_module()["output"][1])
    assert outputs["common_env"]["value"] == "${local.common_env}"
    plain = {**_locals(_functions_module())["common_env"], **worker["pull_env"]}
    for name in [*plain, *worker["secrets"]]:
        assert name in SETTINGS_ENV | EXTRA_ENV | TRACING_ENV | {"GOOGLE_CLOUD_PROJECT"}, (
            f"worker: {name} is read by nothing")  # fmt: skip
    telemetry = _resources(_load(TERRAFORM / "modules" / "worker" / "main.tf"),
                           "google_project_iam_member")["telemetry"]  # fmt: skip
    assert "roles/cloudtrace.agent" in telemetry["for_each"]
    assert "roles/monitoring.metricWriter" in telemetry["for_each"]
    assert set(plain) | set(worker["secrets"]) >= REQUIRED_CLOUD_ENV
    assert _unquote(plain["TALON_WORKER_PULL_MODE"]) == "true"
    assert _unquote(plain["TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER"]) == "gcp_pubsub"
    for setting in ("DISPATCH_SUBSCRIPTION", "LIFECYCLE_SUBSCRIPTION", "DEAD_LETTER_SUBSCRIPTION",
                    "MAX_DELIVERY_ATTEMPTS"):  # fmt: skip
        assert f"TALON_CONTROL_PLANE_MESSAGE_BROKER_{setting}" in plain, setting
    call = _module_call("worker")
    assert call["subscriptions"] == "${module.messaging.subscriptions}"
    assert call["dead_letter_subscription"] == (
        '${module.messaging.dead_letter_subscriptions["dispatch"]}'
    )


def test_the_worker_image_installs_the_lock_with_hashes_and_runs_talon_worker() -> None:
    dockerfile = (ROOT / "Dockerfile.worker").read_text()
    assert "FROM python:3.12-slim" in dockerfile  # the functions' runtime (python312)
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in dockerfile
    assert 'ENTRYPOINT ["talon"]' in dockerfile and 'CMD ["worker"]' in dockerfile
    assert "USER nobody" in dockerfile


# --- the gateway's server (gateway_server) ---------------------------------------------------


def _hcl(value: Any) -> str:
    """A value as python-hcl2 parsed it, written back as an HCL expression."""
    if isinstance(value, dict):
        items = [f"{_unquote(k)} = {_hcl(v)}" for k, v in value.items() if not k.startswith("__")]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_hcl(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


def _console(where: Path, values: dict[str, str], expression: str) -> Any:
    """`expression` as `terraform console` evaluates it over these locals (HCL expressions):
    Terraform's own evaluation of the modules' expressions, without providers."""
    where.mkdir(exist_ok=True)
    body = "\n".join(f"  {name} = {expr}" for name, expr in values.items())
    (where / "main.tf").write_text(f"locals {{\n{body}\n}}\n")
    result = subprocess.run(
        ["terraform", "console"], cwd=where, input=f"jsonencode({expression})\n",
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0 and "Error" not in result.stderr, result.stdout + result.stderr
    return json.loads(json.loads(result.stdout.strip()))


def _inline(expression: str, arguments: dict[str, str]) -> str:
    """A module's expression with its variables replaced by the caller's arguments."""
    for name, argument in sorted(arguments.items(), key=lambda item: -len(item[0])):
        expression = re.sub(rf"\bvar\.{name}\b", f"({argument})", expression)
    return expression


ROOT_GATEWAY_LOCALS = ("prefix", "function_urls", "talon_gateway", "gateway_service_name",
                       "gateway_service_url", "urls", "gateway_url")  # fmt: skip


def _gateway_wiring(where: Path, server: str) -> dict[str, Any]:
    """The root's gateway locals, the functions module's filter and environment and the
    gateway service's URL and preconditions, as Terraform evaluates them for `server`, with
    stand-ins for what only the cloud knows (the project number, the functions' URLs)."""
    root = _locals(_load(TERRAFORM / "main.tf"))
    functions = _locals(_functions_module())
    service = _locals(_load(TERRAFORM / "modules" / "gateway_service" / "main.tf"))
    calls = {name: {k: _hcl(v) for k, v in _module_call(name).items()}
             for name in ("functions", "gateway_service")}  # fmt: skip
    stand_ins = {
        "data.google_project.this.number": "local.project_number",
        "module.gateway_service[0].url": "local.gateway_service_module[0].url",
        "module.functions.urls": "local.functions_urls",
    }

    def root_expr(name: str) -> str:
        expression = _hcl(root[name])
        for reference, stand_in in stand_ins.items():
            expression = expression.replace(reference, stand_in)
        return expression

    def module_expr(module: str, expression: Any, own: dict[str, str], **given: str) -> str:
        text = _hcl(expression)
        for name, renamed in own.items():
            text = re.sub(rf"\blocal\.{name}\b", f"local.{renamed}", text)
        arguments = {k: v.replace("data.google_project.this.number", "local.project_number")
                     for k, v in calls[module].items()}  # fmt: skip
        return _inline(text, arguments | given)

    fn = {"entry_points": "fn_entry_points", "deployed": "fn_deployed"}
    gw = {"label": "gw_label", "public_url": "gw_public_url"}
    outputs = {
        _unquote(k): v for o in _load(TERRAFORM / "outputs.tf")["output"] for k, v in o.items()
    }
    resource = _resources(_load(TERRAFORM / "modules" / "gateway_service" / "main.tf"),
                          "google_cloud_run_v2_service")["gateway"]  # fmt: skip
    gateway_env = {"TALON_GATEWAY_PUBLIC_URL": "local.fn_public_url"}
    public_url = functions["env"]["gateway"]["TALON_GATEWAY_PUBLIC_URL"]
    conditions = [
        module_expr("gateway_service", p["condition"], gw, environment=_hcl(gateway_env))
        for p in resource["lifecycle"][0]["precondition"]
    ]
    values = {
        "project_number": '"123456789012"',
        **{name: root_expr(name) for name in ROOT_GATEWAY_LOCALS},
        "fn_entry_points": _hcl(functions["entry_points"]),
        "fn_deployed": module_expr("functions", functions["deployed"], fn),
        "fn_public_url": module_expr("functions", public_url, fn),
        # Each function's own Cloud Run URL, as the functions module's `urls` output gives it.
        "functions_urls": "{for name in keys(local.fn_deployed) : name => "
        '"https://fn-${name}.run.app"}',
        "gw_label": module_expr("gateway_service", service["label"], gw),
        "gw_public_url": module_expr("gateway_service", service["public_url"], gw),
        "gateway_service_module": "[for i in range(local.gw_count) : {url = local.gw_public_url}]",
        "gw_count": calls["gateway_service"]["count"],
        "gw_preconditions": "[" + ", ".join(conditions) + "]",
        "ops_mcp_url": _hcl(outputs["ops_mcp_url"]["value"]),
    }
    variables = {"gateway_server": f'"{server}"', "project": '"my-project"',
                 "region": '"us-central1"', "environment": '"dev"'}  # fmt: skip
    values = {k: re.sub(r"\bvar\.(\w+)\b", lambda m: variables[m.group(1)], v)
              for k, v in values.items()}  # fmt: skip
    query = ("{count = local.gw_count, gateway_url = local.gateway_url, functions = "
             "keys(local.fn_deployed), public_url = local.fn_public_url, service_url = "
             "local.gw_public_url, preconditions = local.gw_preconditions, ops_mcp_url = "
             "local.ops_mcp_url, ops_mcp_upstream = local.urls.ops_mcp}")  # fmt: skip
    return dict(_console(where / server, values, query))


def test_gateway_server_keeps_the_gateway_function_by_default(tmp_path: Path) -> None:
    """The default deploys the four functions as before: the gateway function, public, knows
    its cloudfunctions.net URL, and gateway_url / ops_mcp_url are its URL."""
    server = _variable("gateway_server")
    assert _unquote(server["default"]) == "functions-framework"
    condition = server["validation"][0]["condition"]
    assert condition == '${contains(["functions-framework", "talon"], var.gateway_server)}'
    for tfvars in sorted((TERRAFORM / "environments").glob("*.tfvars")):
        with tfvars.open() as handle:
            assert _unquote(hcl2.load(handle)["gateway_server"]) == "functions-framework", tfvars
    wiring = _gateway_wiring(tmp_path, "functions-framework")
    assert wiring["count"] == 0  # no gateway service
    assert sorted(wiring["functions"]) == sorted(FUNCTIONS)
    assert wiring["public_url"] == (
        "https://us-central1-my-project.cloudfunctions.net/talon-dev-gateway")  # fmt: skip
    assert wiring["gateway_url"] == "https://fn-gateway.run.app"  # the function's own URL
    assert wiring["ops_mcp_url"] == "https://fn-gateway.run.app/mcp/talon-ops"
    function = _resources(_functions_module(), "google_cloudfunctions2_function")["talon"]
    assert function["for_each"] == "${local.deployed}"
    invokers = _resources(_functions_module(), "google_cloud_run_service_iam_member")["invokers"]
    assert invokers["for_each"] == "${local.invoker_pairs}"
    pairs = _console(tmp_path / "invokers-default", _invoker_locals(True), "local.invoker_pairs")
    assert pairs["gateway/allUsers"] == {"name": "gateway", "member": "allUsers"}
    assert len(pairs) == 4


def _invoker_locals(gateway_function: bool) -> dict[str, str]:
    local = _locals(_functions_module())
    accounts = '{pubsub_push = "push@x", tasks = "tasks@x", gateway = "gateway@x"}'
    values = {name: _hcl(local[name]) for name in ("entry_points", "deployed", "invokers",
                                                   "invoker_pairs")}  # fmt: skip
    return {k: _inline(v, {"gateway_function": str(gateway_function).lower(),
                           "accounts": accounts}) for k, v in values.items()}  # fmt: skip


def test_gateway_server_talon_replaces_the_gateway_function_with_the_service(
    tmp_path: Path,
) -> None:
    """With "talon" no gateway function (nor its invoker grant) is created; the gateway
    service exists, is told its own deterministic run.app URL (Cloud Run:
    https://SERVICE-PROJECT_NUMBER.REGION.run.app), and the URL outputs point at it. The
    ops_mcp function is still invoked by the gateway's account and forwarded to at its URL."""
    wiring = _gateway_wiring(tmp_path, "talon")
    url = "https://talon-dev-gateway-service-123456789012.us-central1.run.app"
    assert wiring["count"] == 1
    assert sorted(wiring["functions"]) == sorted(set(FUNCTIONS) - {"gateway"})
    assert wiring["public_url"] == wiring["service_url"] == wiring["gateway_url"] == url
    assert wiring["ops_mcp_url"] == f"{url}/mcp/talon-ops"
    assert wiring["preconditions"] == [True, True]
    assert wiring["ops_mcp_upstream"] == (
        "https://us-central1-my-project.cloudfunctions.net/talon-dev-ops-mcp")  # fmt: skip
    pairs = _console(tmp_path / "invokers-talon", _invoker_locals(False), "local.invoker_pairs")
    assert not any(pair["name"] == "gateway" for pair in pairs.values())
    assert pairs["ops_mcp/serviceAccount:gateway@x"]["member"] == "serviceAccount:gateway@x"
    # The service runs as the gateway function would: its account, environment and secrets.
    call = _module_call("gateway_service")
    assert call["service_account"] == '${module.iam.emails["gateway"]}'
    assert call["environment"] == "${module.functions.gateway_environment}"
    assert call["secrets"] == "${module.functions.gateway_secrets}"
    assert call["size"] == "${var.gateway_service}"
    assert _module_call("functions")["gateway_function"] == "${!local.talon_gateway}"
    outputs = {
        _unquote(k): v for o in _load(TERRAFORM / "outputs.tf")["output"] for k, v in o.items()
    }
    assert outputs["gateway_url"]["value"] == "${local.gateway_url}"


def test_the_gateway_service_runs_the_packaged_gateway_under_talon_serve() -> None:
    """gateway.Dockerfile unpacks the gateway zip cloudbuild.yaml's package step made, installs
    its lock with hashes, and runs talon.serve on the gateway function, as non-root; the
    image Terraform deploys is the tag the gateway-image step pushes, after the package step.
    (tests/test_gateway_image.py runs that command from an unpacked zip.)"""
    dockerfile = (ROOT / "gateway.Dockerfile").read_text()
    function = _resources(_functions_module(), "google_cloudfunctions2_function")["talon"]
    version = _unquote(function["build_config"][0]["runtime"]).removeprefix("python")
    assert f"FROM python:{version[0]}.{version[1:]}-slim" in dockerfile  # the functions' Python
    assert "COPY dist/functions/gateway.zip " in dockerfile
    assert "pip install --no-cache-dir --require-hashes -r requirements.txt" in dockerfile
    env = dict(item.split("=", 1) for item in re.findall(r"\b[A-Z_]+=\S+", dockerfile))
    assert env["FUNCTION_TARGET"] == "gateway" and env["FUNCTION_SOURCE"] == "/app/main.py"
    assert env["PORT"] == "8080" and env["PYTHONPATH"] == "/app"
    assert 'CMD ["python", "-m", "talon.serve"]' in dockerfile
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)
    assert user is not None and user.group(1).split(":")[0] not in {"0", "root"}
    # The build context lets the zip in (and nothing else new).
    assert "!dist/functions/gateway.zip" in (ROOT / ".dockerignore").read_text().splitlines()

    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    steps = {step["id"]: step for step in build["steps"]}
    image = _unquote(_module_call("gateway_service")["image"])
    pushed = image.replace("${var.region}", "${_REGION}").replace(
        "${var.project}", "${PROJECT_ID}").replace("${local.prefix}", "talon-${_ENV}").replace(
        "${var.source_version}", "${_VERSION}")  # fmt: skip
    script = steps["gateway-image"]["args"][1]
    assert f"docker build -f gateway.Dockerfile -t {pushed} ." in script
    assert f"docker push {pushed}" in script
    assert set(steps["gateway-image"]["waitFor"]) == {"package", "registry"}
    assert "--out" in steps["package"]["args"] and "dist/functions" in steps["package"]["args"]
    assert "gateway-image" in steps["deploy"]["waitFor"]


def test_the_gateway_service_takes_up_to_cloud_runs_1000_requests_and_sets_threads() -> None:
    """Concurrency is at most Cloud Run's 1000 (validated, and in every tfvars), THREADS is
    its own setting, streams may take three quarters of the concurrency (a quarter of that per
    token), HTTP/1 on 8080, /healthz probes, the streams' timeout, public invocation."""
    variable = _variable("gateway_service")
    conditions = " ".join(v["condition"] for v in variable["validation"])
    assert "var.gateway_service.concurrency <= 1000" in conditions
    assert "var.gateway_service.threads >= 1" in conditions
    assert "var.gateway_service.timeout <= 3600" in conditions
    sizes = [variable["default"]]
    for tfvars in sorted((TERRAFORM / "environments").glob("*.tfvars")):
        with tfvars.open() as handle:
            sizes.append(hcl2.load(handle)["gateway_service"])
    for size in sizes:
        assert 1 <= size["concurrency"] <= 1000 and size["threads"] >= 1, size
        assert size["timeout"] == 3600, size  # streams last up to maxSeconds
    assert variable["default"]["concurrency"] == 1000

    module = _load(TERRAFORM / "modules" / "gateway_service" / "main.tf")
    service = _resources(module, "google_cloud_run_v2_service")["gateway"]
    template = service["template"][0]
    assert template["max_instance_request_concurrency"] == "${var.size.concurrency}"
    assert _unquote(template["timeout"]) == "${var.size.timeout}s"
    assert template["service_account"] == "${var.service_account}"
    container = template["containers"][0]
    assert [(_unquote(p["name"]), p["container_port"]) for p in container["ports"]] == [
        ("http1", 8080)]  # fmt: skip
    for probe in ("startup_probe", "liveness_probe"):
        check = container[probe][0]["http_get"][0]
        assert (_unquote(check["path"]), check["port"]) == ("/healthz", 8080), probe
    envs = sorted(d['"env"']["for_each"] for d in container["dynamic"])
    assert envs == ["${merge(var.environment, local.server_env)}", "${var.secrets}"]
    local = _locals(module)
    assert local["server_env"]["THREADS"] == "${tostring(var.size.threads)}"
    assert local["max_open_streams"] == "${max(1, floor(var.size.concurrency * 3 / 4))}"
    assert local["max_streams_per_token"] == "${max(1, floor(local.max_open_streams / 4))}"
    for name in local["server_env"]:
        assert name == "THREADS" or name in SETTINGS_ENV, f"{name} is read by nothing"
    public = _resources(module, "google_cloud_run_v2_service_iam_member")["public"]
    assert _unquote(public["member"]) == "allUsers"
    assert _unquote(public["role"]) == "roles/run.invoker"
