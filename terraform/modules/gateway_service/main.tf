# The gateway as a Cloud Run service under Talon's own server (gateway_server = "talon"): the
# same packaged function as the Cloud Run function (scripts/package_functions.py's
# gateway.zip: main.py, talon/, skills/, ui/dist and the hashed lock), unpacked into an image
# by gateway.Dockerfile and served by `python -m talon.serve` (FUNCTION_TARGET=gateway). Under
# functions-framework's server (what Cloud Run functions run) every open SSE stream holds one
# of THREADS threads; under talon.serve a stream is handed to the process's stream hub once
# its first events are sent and holds no thread, so the instance's concurrency can be what
# the streams need rather than what its threads allow (README: Request limits, Deploying).
#
# Same database, broker, scheduler, secrets and service account as the gateway function (the
# functions module's gateway_environment and gateway_secrets, the gateway's account): its
# Cloud SQL, publisher and enqueuer rights, and the ops_mcp function's invoker grant (the
# forwarding to /mcp/talon-ops attaches that account's ID token), carry over unchanged.

variable "project" { type = string }
variable "region" { type = string }
variable "name" {
  description = "The service's name; its deterministic URL (public_url) is derived from it."
  type        = string
}
variable "project_number" { type = string }
variable "image" {
  description = "The gateway image (gateway.Dockerfile), built and pushed by cloudbuild.yaml."
  type        = string
}
variable "service_account" { type = string }
variable "environment" {
  description = "The gateway function's environment (modules/functions, gateway_environment); its TALON_GATEWAY_PUBLIC_URL must be this service's URL."
  type        = map(string)
}
variable "secrets" { type = map(string) }
variable "size" {
  type = object({
    min_instances = number
    max_instances = number
    concurrency   = number
    threads       = number
    memory        = string
    cpu           = string
    timeout       = number
  })
}

locals {
  # Cloud Run's deterministic URL, https://SERVICE-PROJECT_NUMBER.REGION.run.app (known before
  # the service exists, so the gateway can be told its own URL); only assigned while that
  # first DNS label is at most 63 characters (checked below).
  label      = "${var.name}-${var.project_number}"
  public_url = "https://${local.label}.${var.region}.run.app"
  # Streams may hold three quarters of the requests Cloud Run sends an instance, so a quarter
  # always serves everything else; one token a quarter of those, so one reader never takes
  # every slot (the same shares as under a thread-per-stream server, README: Request limits).
  # Without these, talon.serve's defaults (10,000 and 2,500 per process) would let streams
  # take all of the instance's concurrency.
  max_open_streams      = max(1, floor(var.size.concurrency * 3 / 4))
  max_streams_per_token = max(1, floor(local.max_open_streams / 4))
  server_env = {
    # Threads for requests that are not open streams (a stream holds one only until its first
    # events are sent); the cap on unauthenticated requests is half of them.
    THREADS                             = tostring(var.size.threads)
    TALON_GATEWAY_MAX_OPEN_STREAMS      = tostring(local.max_open_streams)
    TALON_GATEWAY_MAX_STREAMS_PER_TOKEN = tostring(local.max_streams_per_token)
  }
}

resource "google_cloud_run_v2_service" "gateway" {
  project             = var.project
  location            = var.region
  name                = var.name
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  lifecycle {
    precondition {
      condition     = length(local.label) <= 63
      error_message = "The service name and project number make a DNS label over 63 characters: Cloud Run would assign no deterministic URL, and TALON_GATEWAY_PUBLIC_URL would be wrong."
    }
    precondition {
      condition     = var.environment["TALON_GATEWAY_PUBLIC_URL"] == local.public_url
      error_message = "The gateway's environment must name this service's URL as TALON_GATEWAY_PUBLIC_URL."
    }
  }

  template {
    service_account = var.service_account
    # Cloud Run's maximum (1000 requests per instance; an open SSE stream is a request), and
    # the default: one talon.serve process held 5,000 quiet streams at 143 MiB RSS
    # (bench/streams.py), so the platform's cap, not the process, is the limit. Under
    # functions-framework the same instance would hold about as many streams as threads.
    max_instance_request_concurrency = var.size.concurrency
    # A stream is a request for as long as it is open (maxSeconds; clients resume after it).
    timeout = "${var.size.timeout}s"
    scaling {
      min_instance_count = var.size.min_instances
      max_instance_count = var.size.max_instances
    }

    containers {
      image = var.image
      ports {
        name           = "http1"
        container_port = 8080
      }
      resources {
        limits = { cpu = var.size.cpu, memory = var.size.memory }
      }

      dynamic "env" {
        for_each = merge(var.environment, local.server_env)
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = var.secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      # /healthz answers 200 once the database answers (and never takes a request slot).
      # Start-up allows two minutes for the first Cloud SQL connection; liveness restarts an
      # instance only after 90 s without an answer, so a short database outage does not
      # restart every gateway (their clients would all reconnect at once).
      startup_probe {
        period_seconds    = 5
        timeout_seconds   = 5
        failure_threshold = 24
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
      liveness_probe {
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
    }
  }
}

# Public like the gateway function: Talon checks its own bearer tokens.
resource "google_cloud_run_v2_service_iam_member" "public" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.gateway.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

output "url" {
  description = "The service's deterministic URL, the one the gateway knows as its own (TALON_GATEWAY_PUBLIC_URL)."
  value       = local.public_url
}
