# The gRPC surface (talon.v1; `python -m talon.grpc`) as a Cloud Run service: Cloud Run
# functions cannot serve gRPC. Its container image is built by Cloud Build (grpc.Dockerfile)
# into the environment's Artifact Registry repository. HTTP/2 end to end: the port is named
# h2c, so Cloud Run's front end speaks cleartext HTTP/2 to the container (TLS ends at the
# front end, as for the functions). Same database, broker, scheduler and secrets as the
# gateway, through the same service account (Cloud SQL client, the admin token, publisher
# and enqueuer rights): the environment is the gateway function's, from the functions module.

variable "project" { type = string }
variable "region" { type = string }
variable "prefix" { type = string }
variable "image" { type = string }
variable "service_account" { type = string }
variable "environment" { type = map(string) }
variable "secrets" { type = map(string) }
variable "scaling" {
  type = object({
    min_instances = number
    max_instances = number
    concurrency   = number
    memory        = string
    cpu           = string
    timeout       = number
  })
}

resource "google_cloud_run_v2_service" "grpc" {
  project             = var.project
  location            = var.region
  name                = "${var.prefix}-grpc"
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account                  = var.service_account
    max_instance_request_concurrency = var.scaling.concurrency
    # StreamEvents holds a request open (600 s by default, at most 3600).
    timeout = "${var.scaling.timeout}s"
    scaling {
      min_instance_count = var.scaling.min_instances
      max_instance_count = var.scaling.max_instances
    }

    containers {
      image = var.image
      ports {
        name           = "h2c"
        container_port = 8080
      }
      resources {
        limits = { cpu = var.scaling.cpu, memory = var.scaling.memory }
      }

      dynamic "env" {
        for_each = var.environment
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

      # As many calls as the container serves at once (open streams included).
      env {
        name  = "THREADS"
        value = tostring(var.scaling.concurrency)
      }

      # gRPC health checking (grpc.health.v1), which the server serves.
      startup_probe {
        grpc {
          port = 8080
        }
      }
      liveness_probe {
        grpc {
          port = 8080
        }
      }
    }
  }
}

# Public like the gateway: Talon checks its own bearer tokens (authorization metadata).
resource "google_cloud_run_v2_service_iam_member" "public" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.grpc.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

output "url" {
  value = google_cloud_run_v2_service.grpc.uri
}
