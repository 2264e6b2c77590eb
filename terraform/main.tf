# Talon on Google Cloud: Cloud SQL for PostgreSQL, Pub/Sub to the worker code (pushed to the
# dispatch function, or pulled by a long-running worker: var.worker_mode), Cloud Tasks for
# schedule fires, four Cloud Run functions sharing the core package, and the gRPC surface as a
# Cloud Run service (a container image Cloud Build builds).

locals {
  prefix = "talon-${var.environment}"
  # Cloud Run functions have a predictable URL, so functions can know each other's (and
  # their own) URL without a dependency cycle.
  function_urls = {
    for name in ["gateway", "dispatch", "scheduler", "ops_mcp"] :
    name => "https://${var.region}-${var.project}.cloudfunctions.net/${local.prefix}-${replace(name, "_", "-")}"
  }
  pull = var.worker_mode == "pull"
  # gateway_server = "talon": the gateway is a Cloud Run service (modules/gateway_service)
  # running the packaged gateway function under `python -m talon.serve`, and no gateway
  # function is deployed. Its URL is Cloud Run's deterministic one
  # (https://SERVICE-PROJECT_NUMBER.REGION.run.app), so the gateway knows its own URL before
  # it exists. Not named like the function (prefix-gateway): switching an environment from
  # one to the other creates the service beside the function it replaces.
  talon_gateway        = var.gateway_server == "talon"
  gateway_service_name = "${local.prefix}-gateway-service"
  gateway_service_url  = "https://${local.gateway_service_name}-${data.google_project.this.number}.${var.region}.run.app"
  # The URLs the functions are told (each other's and the gateway's own public URL).
  urls = merge(local.function_urls, local.talon_gateway ? { gateway = local.gateway_service_url } : {})
  # What callers use: the function's Cloud Run URL, or the service's.
  gateway_url = local.talon_gateway ? module.gateway_service[0].url : module.functions.urls["gateway"]
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
  urls           = local.urls
  accounts       = module.iam.emails
  # Deployed as a function unless gateway_server = "talon" serves it (below).
  gateway_function = !local.talon_gateway

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

module "grpc" {
  source          = "./modules/grpc"
  project         = var.project
  region          = var.region
  prefix          = local.prefix
  image           = "${var.region}-docker.pkg.dev/${var.project}/${local.prefix}/grpc:${var.source_version}"
  service_account = module.iam.emails["gateway"]
  environment     = module.functions.gateway_environment
  secrets         = module.functions.gateway_secrets
  scaling         = var.grpc

  depends_on = [google_project_service.apis]
}

# gateway_server = "talon" only: the gateway under talon.serve, from the image cloudbuild.yaml
# builds out of the packaged gateway function (gateway.Dockerfile), with the gateway
# function's environment, secrets and service account.
module "gateway_service" {
  source          = "./modules/gateway_service"
  count           = local.talon_gateway ? 1 : 0
  project         = var.project
  region          = var.region
  name            = local.gateway_service_name
  project_number  = data.google_project.this.number
  image           = "${var.region}-docker.pkg.dev/${var.project}/${local.prefix}/gateway:${var.source_version}"
  service_account = module.iam.emails["gateway"]
  environment     = module.functions.gateway_environment
  secrets         = module.functions.gateway_secrets
  size            = var.gateway_service

  depends_on = [google_project_service.apis]
}
