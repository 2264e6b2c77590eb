# The pull-mode worker (worker_mode = "pull"): `talon worker` consuming the pull subscriptions
# by streaming pull, as a Cloud Run service with CPU always allocated and a fixed number of
# instances.
#
# Why a service with CPU always allocated and not a worker pool: a worker pool is the
# purpose-built shape (no HTTP port, no request-based scaling), but the Terraform provider
# Talon pins (hashicorp/google 6.14.1) has no worker pool resource, and it could not be
# upgraded and checked here. With CPU always allocated (cpu_idle = false) a service's
# instances keep running between requests, which is what a streaming-pull consumer needs;
# min = max instances keeps them from being scaled away for lack of requests. The price is a
# health port (`talon worker` answers /healthz on $PORT), reachable by nobody: ingress is
# internal only and no one is granted roles/run.invoker.

variable "enabled" { type = bool }
variable "project" { type = string }
variable "region" { type = string }
variable "prefix" { type = string }
variable "image" {
  description = "The worker image (Dockerfile.worker), built and pushed by cloudbuild.yaml."
  type        = string
}
variable "account_email" { type = string }
variable "size" {
  type = object({
    instances   = number
    concurrency = number
    cpu         = string
    memory      = string
  })
}
variable "common_env" {
  description = "What every function gets (modules/functions, output common_env)."
  type        = map(string)
}
variable "subscriptions" { type = map(string) }
variable "dead_letter_subscription" { type = string }
variable "max_delivery_attempts" { type = number }
variable "database_password_secret" { type = string }
variable "mcp_header_secrets" { type = list(string) }
variable "model_key_secrets" { type = list(string) }

locals {
  # What the functions get, then what makes it the pull worker (these win).
  pull_env = {
    TALON_WORKER_PULL_MODE                                      = "true"
    TALON_WORKER_SKILLS_DIR                                     = "skills"
    TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_SUBSCRIPTION    = var.subscriptions["dispatch"]
    TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_SUBSCRIPTION   = var.subscriptions["lifecycle"]
    TALON_CONTROL_PLANE_MESSAGE_BROKER_DEAD_LETTER_SUBSCRIPTION = var.dead_letter_subscription
    TALON_CONTROL_PLANE_MESSAGE_BROKER_MAX_DELIVERY_ATTEMPTS    = tostring(var.max_delivery_attempts)
  }
  env     = merge(var.common_env, local.pull_env)
  secrets = { TALON_CONTROL_PLANE_DATABASE_PASSWORD = var.database_password_secret }
  member  = "serviceAccount:${var.account_email}"
}

resource "google_cloud_run_v2_service" "worker" {
  count    = var.enabled ? 1 : 0
  project  = var.project
  location = var.region
  name     = "${var.prefix}-worker"
  ingress  = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  lifecycle {
    precondition {
      condition     = var.image != ""
      error_message = "worker_mode pull needs worker_image (cloudbuild.yaml passes the image it built)."
    }
  }

  template {
    service_account = var.account_email

    scaling {
      min_instance_count = var.size.instances
      max_instance_count = var.size.instances
    }

    containers {
      image = var.image
      args  = ["worker", "--concurrency", tostring(var.size.concurrency)]

      resources {
        limits = {
          cpu    = var.size.cpu
          memory = var.size.memory
        }
        cpu_idle          = false
        startup_cpu_boost = true
      }

      ports {
        container_port = 8080
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }

      # /healthz fails once a subscription stream has failed for good: Cloud Run restarts it.
      liveness_probe {
        period_seconds = 30
        http_get {
          path = "/healthz"
        }
      }

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.secrets
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
    }
  }
}

# Least privilege: the database through the connector, and the secrets a turn reads (the same
# grants the dispatch function has). Its subscriptions are granted in modules/messaging, its
# topics (it relays its own outbox) and the database password in the root module.
resource "google_project_iam_member" "sql_client" {
  count   = var.enabled ? 1 : 0
  project = var.project
  role    = "roles/cloudsql.client"
  member  = local.member
}

# Its spans to Cloud Trace, its metrics to Cloud Monitoring (common_env sets the exporters).
resource "google_project_iam_member" "telemetry" {
  for_each = var.enabled ? toset(["roles/cloudtrace.agent", "roles/monitoring.metricWriter"]) : toset([])
  project  = var.project
  role     = each.value
  member   = local.member
}

resource "google_secret_manager_secret_iam_member" "mcp_headers" {
  for_each  = var.enabled ? toset(var.mcp_header_secrets) : toset([])
  project   = var.project
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = local.member
}

resource "google_secret_manager_secret_iam_member" "model_keys" {
  for_each  = var.enabled ? toset(var.model_key_secrets) : toset([])
  project   = var.project
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = local.member
}
