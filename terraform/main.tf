# Talon on Google Cloud: Cloud SQL for PostgreSQL, Pub/Sub to the worker code (pushed to the
# dispatch function, or pulled by a long-running worker: var.worker_mode), Cloud Tasks for
# schedule fires, four Cloud Run functions sharing the core package.

locals {
  prefix = "talon-${var.environment}"
  # Cloud Run functions have a predictable URL, so functions can know each other's (and
  # their own) URL without a dependency cycle.
  function_urls = {
    for name in ["gateway", "dispatch", "scheduler", "ops_mcp"] :
    name => "https://${var.region}-${var.project}.cloudfunctions.net/${local.prefix}-${replace(name, "_", "-")}"
  }
  pull = var.worker_mode == "pull"
  # The functions, plus the pull worker when it runs: it reads the database password and
  # relays its own outbox (publishes) like they do.
  runtime_members = merge(module.iam.function_members, local.pull ? { worker = module.iam.worker_member } : {})
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "cloudtrace.googleapis.com",
    "iam.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

module "iam" {
  source  = "./modules/iam"
  project = var.project
  prefix  = local.prefix

  depends_on = [google_project_service.apis]
}

module "database" {
  source              = "./modules/database"
  project             = var.project
  region              = var.region
  prefix              = local.prefix
  tier                = var.database_tier
  availability        = var.database_availability
  deletion_protection = var.deletion_protection
  accessors           = local.runtime_members

  depends_on = [google_project_service.apis]
}

module "messaging" {
  source                = "./modules/messaging"
  project               = var.project
  prefix                = local.prefix
  dispatch_url          = local.function_urls["dispatch"]
  push_account_email    = module.iam.emails["pubsub_push"]
  publishers            = local.runtime_members
  worker_mode           = var.worker_mode
  max_delivery_attempts = var.max_delivery_attempts
  worker_member         = module.iam.worker_member

  depends_on = [google_project_service.apis]
}

module "scheduler" {
  source              = "./modules/scheduler"
  project             = var.project
  region              = var.region
  prefix              = local.prefix
  enqueuers           = module.iam.function_members
  dispatch_url        = local.function_urls["dispatch"]
  scheduler_url       = local.function_urls["scheduler"]
  push_account_email  = module.iam.emails["pubsub_push"]
  tasks_account_email = module.iam.emails["tasks"]

  depends_on = [google_project_service.apis]
}

module "functions" {
  source         = "./modules/functions"
  project        = var.project
  region         = var.region
  prefix         = local.prefix
  source_bucket  = var.source_bucket
  source_version = var.source_version
  scaling        = var.functions
  urls           = local.function_urls
  accounts       = module.iam.emails

  database = {
    instance_connection_name = module.database.instance_connection_name
    name                     = module.database.database_name
    user                     = module.database.user
    password_secret          = module.database.password_secret_id
  }
  admin_token_secret = module.iam.admin_token_secret_id
  mcp_header_secrets = var.mcp_header_secrets
  model_key_secrets  = var.model_key_secrets
  topics             = module.messaging.topics
  queue              = module.scheduler.queue
  trace_sample_ratio = var.trace_sample_ratio

  depends_on = [google_project_service.apis]
}

module "observability" {
  source                    = "./modules/observability"
  project                   = var.project
  prefix                    = local.prefix
  notification_channels     = var.alert_notification_channels
  turn_failure_ratio        = var.alert_turn_failure_ratio
  outbox_age_seconds        = var.alert_outbox_age_seconds
  schedule_lateness_seconds = var.alert_schedule_lateness_seconds

  depends_on = [google_project_service.apis]
}

module "worker" {
  source                   = "./modules/worker"
  enabled                  = local.pull
  project                  = var.project
  region                   = var.region
  prefix                   = local.prefix
  image                    = var.worker_image
  account_email            = module.iam.emails["worker"]
  size                     = var.worker
  common_env               = module.functions.common_env
  subscriptions            = module.messaging.subscriptions
  dead_letter_subscription = module.messaging.dead_letter_subscriptions["dispatch"]
  max_delivery_attempts    = var.max_delivery_attempts
  database_password_secret = module.database.password_secret_id
  mcp_header_secrets       = var.mcp_header_secrets
  model_key_secrets        = var.model_key_secrets

  depends_on = [google_project_service.apis]
}
