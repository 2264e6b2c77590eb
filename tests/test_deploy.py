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
