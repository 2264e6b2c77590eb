# The Cloud Tasks queue that holds each schedule's next fire, and Cloud Scheduler jobs that
# run the two repair sweeps (outbox rows never published, schedule fires never enqueued).

variable "project" { type = string }
variable "region" { type = string }
variable "prefix" { type = string }
variable "enqueuers" {
  description = "IAM members that create tasks."
  type        = map(string)
}
variable "dispatch_url" { type = string }
variable "scheduler_url" { type = string }
variable "push_account_email" {
  description = "The identity dispatch already trusts (its push verification); used for its sweep."
  type        = string
}
variable "tasks_account_email" {
  description = "The identity the scheduler function already trusts; used for its sweep."
  type        = string
}

resource "google_cloud_tasks_queue" "scheduler" {
  project  = var.project
  location = var.region
  name     = "${var.prefix}-scheduler"

  rate_limits {
    max_dispatches_per_second = 200
    max_concurrent_dispatches = 100
  }

  # A failed callback is retried with backoff; the fire slot makes retries harmless.
  retry_config {
    max_attempts       = 20
    max_retry_duration = "3600s"
    min_backoff        = "1s"
    max_backoff        = "300s"
    max_doublings      = 8
  }

  stackdriver_logging_config {
    sampling_ratio = 1.0
  }
}

resource "google_cloud_tasks_queue_iam_member" "enqueuers" {
  for_each = { for key, member in var.enqueuers : key => member if key != "dispatch" }
  project  = var.project
  location = var.region
  name     = google_cloud_tasks_queue.scheduler.name
  role     = "roles/cloudtasks.enqueuer"
  member   = each.value
}

resource "google_cloud_scheduler_job" "sweeps" {
  for_each = {
    outbox    = { url = var.dispatch_url, account = var.push_account_email }
    schedules = { url = var.scheduler_url, account = var.tasks_account_email }
  }
  project  = var.project
  region   = var.region
  name     = "${var.prefix}-sweep-${each.key}"
  schedule = "*/5 * * * *"

  http_target {
    http_method = "POST"
    uri         = "${each.value.url}/sweep"
    oidc_token {
      service_account_email = each.value.account
      audience              = each.value.url
    }
  }
}

output "queue" {
  value = google_cloud_tasks_queue.scheduler.name
}
