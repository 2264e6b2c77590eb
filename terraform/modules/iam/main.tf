# One service account per function (least privilege is granted on each resource in the
# module that owns it), plus the identities Google services use to call the private
# functions: Pub/Sub push, Cloud Tasks and Cloud Scheduler.

variable "project" { type = string }
variable "prefix" { type = string }

locals {
  accounts = {
    gateway     = "Talon gateway (public API)"
    dispatch    = "Talon dispatch (runs turns)"
    scheduler   = "Talon scheduler (Cloud Tasks callback)"
    ops_mcp     = "Talon ops MCP server"
    worker      = "Talon pull worker (runs turns; worker_mode pull)"
    pubsub_push = "Pub/Sub push to Talon dispatch"
    tasks       = "Cloud Tasks calls to Talon scheduler"
  }
  functions = ["gateway", "dispatch", "scheduler", "ops_mcp"]
}

resource "google_service_account" "accounts" {
  for_each     = local.accounts
  project      = var.project
  account_id   = substr("${var.prefix}-${replace(each.key, "_", "-")}", 0, 30)
  display_name = each.value
}

# pubsub_push and tasks also sign the Cloud Scheduler sweep calls to dispatch and scheduler.

# Every function reaches Cloud SQL through the connector.
resource "google_project_iam_member" "sql_client" {
  for_each = toset(local.functions)
  project  = var.project
  role     = "roles/cloudsql.client"
  member   = google_service_account.accounts[each.key].member
}

# Every function exports its spans to Cloud Trace and its metrics to Cloud Monitoring
# (talon/telemetry).
resource "google_project_iam_member" "trace_agent" {
  for_each = toset(local.functions)
  project  = var.project
  role     = "roles/cloudtrace.agent"
  member   = google_service_account.accounts[each.key].member
}

resource "google_project_iam_member" "metric_writer" {
  for_each = toset(local.functions)
  project  = var.project
  role     = "roles/monitoring.metricWriter"
  member   = google_service_account.accounts[each.key].member
}

# Functions that enqueue schedule fires (gateway on schedule writes, scheduler for the next
# fire, ops_mcp on pause/resume) attach the tasks account's OIDC token to each task.
resource "google_service_account_iam_member" "act_as_tasks" {
  for_each           = toset(["gateway", "scheduler", "ops_mcp"])
  service_account_id = google_service_account.accounts["tasks"].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.accounts[each.key].member
}

# The bootstrap admin token (TALON_ADMIN_TOKEN of the gateway). Add a version to set it:
#   printf 'tln_...' | gcloud secrets versions add <id> --data-file=-
resource "google_secret_manager_secret" "admin_token" {
  project   = var.project
  secret_id = "${var.prefix}-admin-token"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_iam_member" "admin_token" {
  project   = var.project
  secret_id = google_secret_manager_secret.admin_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.accounts["gateway"].member
}

output "emails" {
  value = { for key, account in google_service_account.accounts : key => account.email }
}

output "function_members" {
  description = "IAM member strings of the four function service accounts."
  value       = { for key in local.functions : key => google_service_account.accounts[key].member }
}

output "worker_member" {
  description = "IAM member string of the pull worker's account (granted nothing in push mode)."
  value       = google_service_account.accounts["worker"].member
}

output "admin_token_secret_id" {
  value = google_secret_manager_secret.admin_token.secret_id
}
