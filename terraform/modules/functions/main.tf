# The four Cloud Run functions (2nd gen), built from the packaged sources
# (scripts/package_functions.py uploads <version>/<function>.zip), each with its own
# service account; three when the gateway is served by modules/gateway_service instead
# (gateway_function = false), which takes the gateway's environment and secrets from here.
# The environment uses exactly the names Talon's settings read (TALON_<SECTION>_<FIELD>; see
# README, Configuration).

variable "project" { type = string }
variable "region" { type = string }
variable "prefix" { type = string }
variable "source_bucket" { type = string }
variable "source_version" { type = string }
variable "scaling" {
  type = map(object({
    min_instances = number
    max_instances = number
    concurrency   = number
    memory        = string
    cpu           = string
    timeout       = number
  }))
}
variable "urls" { type = map(string) }
variable "accounts" { type = map(string) }
variable "database" {
  type = object({
    instance_connection_name = string
    name                     = string
    user                     = string
    password_secret          = string
  })
}
variable "admin_token_secret" { type = string }
variable "mcp_header_secrets" { type = list(string) }
variable "model_key_secrets" { type = list(string) }
variable "topics" { type = map(string) }
variable "queue" { type = string }
variable "trace_sample_ratio" { type = number }
variable "gateway_function" {
  description = "Deploy the gateway as a Cloud Run function (false: modules/gateway_service serves it)."
  type        = bool
  default     = true
}

data "google_project" "this" {
  project_id = var.project
}

locals {
  # The ops_mcp function's own hosts: that of the cloudfunctions.net URL the gateway forwards
  # to (var.urls), and its Cloud Run service's deterministic run.app URL
  # (<service>-<project number>.<region>.run.app).
  ops_mcp_hosts = [
    split("/", var.urls["ops_mcp"])[2],
    "${var.prefix}-ops-mcp-${data.google_project.this.number}.${var.region}.run.app",
  ]
  # What every function needs: the database, the broker (each relays its own outbox) and
  # the scheduler backend (schedule writes enqueue their next fire).
  common_env = {
    TALON_LOG_FORMAT                                      = "json"
    TALON_CONTROL_PLANE_DATABASE_INSTANCE_CONNECTION_NAME = var.database.instance_connection_name
    TALON_CONTROL_PLANE_DATABASE_NAME                     = var.database.name
    TALON_CONTROL_PLANE_DATABASE_USER                     = var.database.user
    TALON_CONTROL_PLANE_DATABASE_IP_TYPE                  = "public"
    TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER             = "gcp_pubsub"
    TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT            = var.project
    TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC     = var.topics["dispatch"]
    TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC    = var.topics["lifecycle"]
    TALON_CONTROL_PLANE_SCHEDULER_BACKEND                 = "cloud_tasks"
    TALON_CONTROL_PLANE_SCHEDULER_PROJECT                 = var.project
    TALON_CONTROL_PLANE_SCHEDULER_LOCATION                = var.region
    TALON_CONTROL_PLANE_SCHEDULER_QUEUE                   = var.queue
    TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_URL            = var.urls["scheduler"]
    TALON_CONTROL_PLANE_SCHEDULER_SERVICE_ACCOUNT_EMAIL   = var.accounts["tasks"]
    TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_VERIFICATION   = "oidc"
    TALON_WORKER_PULL_MODE                                = "false"
    # Traces to Cloud Trace (talon/telemetry): a sampled share of new traces, and always
    # those whose caller sampled them; metrics to Cloud Monitoring (every 60 s). The project
    # names the trace in log lines.
    OTEL_TRACES_EXPORTER    = "gcp_trace"
    OTEL_METRICS_EXPORTER   = "gcp_monitoring"
    OTEL_TRACES_SAMPLER     = "parentbased_traceidratio"
    OTEL_TRACES_SAMPLER_ARG = tostring(var.trace_sample_ratio)
    GOOGLE_CLOUD_PROJECT    = var.project
  }
  env = {
    gateway = {
      TALON_GATEWAY_OPS_MCP_UPSTREAM = var.urls["ops_mcp"]
      TALON_GATEWAY_OPS_MCP_ID_TOKEN = "true"
      TALON_GATEWAY_PUBLIC_URL       = var.urls["gateway"]
    }
    dispatch = {
      TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION          = "oidc"
      TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_AUDIENCE              = var.urls["dispatch"]
      TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_SERVICE_ACCOUNT_EMAIL = var.accounts["pubsub_push"]
      TALON_WORKER_SKILLS_DIR                                       = "skills"
    }
    scheduler = {}
    ops_mcp = {
      # functions-framework serves this one as ASGI (the MCP SDK is ASGI-only).
      FUNCTION_USE_ASGI = "true"
      # The Host headers its DNS-rebinding protection accepts: its own.
      TALON_GATEWAY_OPS_MCP_ALLOWED_HOSTS = join(",", local.ops_mcp_hosts)
    }
  }
  # functions-framework's gunicorn serves THREADS requests at once (else 4 per core): the
  # gateway serves as many as Cloud Run sends it, and derives its caps on unauthenticated
  # requests and open streams from them (README: Request limits). Not in env["gateway"],
  # which the gRPC service shares: it sets THREADS from its own concurrency.
  server_env = {
    gateway = { THREADS = tostring(var.scaling["gateway"].concurrency) }
  }
  # Secrets arrive as environment variables, resolved by Cloud Run at start.
  secrets = {
    gateway   = { TALON_CONTROL_PLANE_DATABASE_PASSWORD = var.database.password_secret, TALON_ADMIN_TOKEN = var.admin_token_secret }
    dispatch  = { TALON_CONTROL_PLANE_DATABASE_PASSWORD = var.database.password_secret }
    scheduler = { TALON_CONTROL_PLANE_DATABASE_PASSWORD = var.database.password_secret }
    ops_mcp   = { TALON_CONTROL_PLANE_DATABASE_PASSWORD = var.database.password_secret }
  }
  entry_points = { gateway = "gateway", dispatch = "dispatch", scheduler = "scheduler", ops_mcp = "ops_mcp" }
  # The functions deployed here.
  deployed = { for name, entry in local.entry_points : name => entry if name != "gateway" || var.gateway_function }
}

resource "google_cloudfunctions2_function" "talon" {
  for_each = local.deployed
  project  = var.project
  location = var.region
  name     = "${var.prefix}-${replace(each.key, "_", "-")}"

  build_config {
    runtime     = "python312"
    entry_point = each.value
    source {
      storage_source {
        bucket = var.source_bucket
        object = "${var.source_version}/${each.key}.zip"
      }
    }
  }

  service_config {
    service_account_email            = var.accounts[each.key]
    min_instance_count               = var.scaling[each.key].min_instances
    max_instance_count               = var.scaling[each.key].max_instances
    max_instance_request_concurrency = var.scaling[each.key].concurrency
    available_memory                 = var.scaling[each.key].memory
    available_cpu                    = var.scaling[each.key].cpu
    timeout_seconds                  = var.scaling[each.key].timeout
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    environment_variables            = merge(local.common_env, local.env[each.key], lookup(local.server_env, each.key, {}))

    dynamic "secret_environment_variables" {
      for_each = local.secrets[each.key]
      content {
        key        = secret_environment_variables.key
        project_id = var.project
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }
}

# Who may invoke what: the gateway is public (Talon checks its own tokens); dispatch only
# Pub/Sub push, scheduler only Cloud Tasks (and both their Cloud Scheduler sweeps); ops_mcp
# only the gateway, which forwards /mcp/talon-ops to it.
locals {
  invokers = {
    gateway   = ["allUsers"]
    dispatch  = ["serviceAccount:${var.accounts["pubsub_push"]}"]
    scheduler = ["serviceAccount:${var.accounts["tasks"]}"]
    ops_mcp   = ["serviceAccount:${var.accounts["gateway"]}"]
  }
  # Grants on the functions deployed here (the gateway service grants its own).
  invoker_pairs = merge([
    for name, members in local.invokers : { for member in members : "${name}/${member}" => { name = name, member = member } }
    if contains(keys(local.deployed), name)
  ]...)
}

resource "google_cloud_run_service_iam_member" "invokers" {
  for_each = local.invoker_pairs
  project  = var.project
  location = var.region
  service  = google_cloudfunctions2_function.talon[each.value.name].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value.member
}

# The worker resolves MCPServer header secrets ({secret: projects/.../secrets/...}) at call
# time: dispatch runs the turns, so it alone reads them.
resource "google_secret_manager_secret_iam_member" "mcp_headers" {
  for_each  = toset(var.mcp_header_secrets)
  project   = var.project
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${var.accounts["dispatch"]}"
}

# Model keys (apiKeyFrom: {secret: ...}) are read by the worker at call time, per secret: the
# dispatch account gets exactly these secrets, no project-wide Secret Manager role, and no
# other function reads them.
resource "google_secret_manager_secret_iam_member" "model_keys" {
  for_each  = toset(var.model_key_secrets)
  project   = var.project
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${var.accounts["dispatch"]}"
}

output "common_env" {
  description = "The environment every function gets; the pull worker starts from it too."
  value       = local.common_env
}

# The gateway's environment and secrets, which the gRPC service (modules/grpc) shares.
output "gateway_environment" {
  value = merge(local.common_env, local.env["gateway"])
}

output "gateway_secrets" {
  value = local.secrets["gateway"]
}

output "urls" {
  description = "Each deployed function's Cloud Run URL (no gateway when gateway_function is false)."
  value       = { for key, fn in google_cloudfunctions2_function.talon : key => fn.service_config[0].uri }
}
