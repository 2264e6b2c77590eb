# The session-dispatch and lifecycle topics, with retry backoff and a dead-letter topic each.
# worker_mode "push": each is pushed to the dispatch function with an OIDC token. "pull": each
# has a pull subscription the long-running worker (modules/worker) consumes by streaming pull.
# Either way the dispatch topic's dead letters reach the worker code (pushed to dispatch, or
# pulled by the worker), which fails the turn a dead event names; the lifecycle topic's are
# kept for inspection.

variable "project" { type = string }
variable "prefix" { type = string }
variable "dispatch_url" { type = string }
variable "push_account_email" { type = string }
variable "publishers" {
  description = "IAM members that publish (every function relays its transaction outbox)."
  type        = map(string)
}
variable "worker_mode" { type = string }
variable "max_delivery_attempts" { type = number }
variable "worker_member" {
  description = "IAM member of the pull worker's account (subscribes in pull mode)."
  type        = string
}

data "google_project" "this" {
  project_id = var.project
}

locals {
  topics        = { dispatch = "${var.prefix}-session-dispatch", lifecycle = "${var.prefix}-lifecycle" }
  pubsub_agent  = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  publisher_set = { for pair in setproduct(keys(local.topics), keys(var.publishers)) : "${pair[0]}-${pair[1]}" => pair }
}

resource "google_pubsub_topic" "topics" {
  for_each                   = local.topics
  project                    = var.project
  name                       = each.value
  message_retention_duration = "86400s"
}

resource "google_pubsub_topic" "dead_letter" {
  for_each = local.topics
  project  = var.project
  name     = "${each.value}-dead-letter"
}

resource "google_pubsub_subscription" "push" {
  for_each = var.worker_mode == "push" ? local.topics : {}
  project  = var.project
  name     = "${each.value}-push"
  topic    = google_pubsub_topic.topics[each.key].id

  # The dispatch function answers when the turn has run (or 503 to retry); turns are
  # bounded by their deadline, and a lease lets another delivery take over a stuck one.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = var.dispatch_url
    oidc_token {
      service_account_email = var.push_account_email
      audience              = var.dispatch_url
    }
    attributes = {
      x-goog-version = "v1"
    }
  }

  retry_policy {
    minimum_backoff = "1s"
    maximum_backoff = "60s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

# Pull mode: the worker keeps extending a message's deadline while its turn runs (its client
# leases it), so the subscription's own deadline is what a killed worker's messages wait
# before they come back.
resource "google_pubsub_subscription" "pull" {
  for_each = var.worker_mode == "pull" ? local.topics : {}
  project  = var.project
  name     = "${each.value}-pull"
  topic    = google_pubsub_topic.topics[each.key].id

  ack_deadline_seconds       = 10
  message_retention_duration = "604800s"

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

locals {
  # Subscriptions Pub/Sub forwards dead letters from (its agent must be a subscriber there).
  sources = merge(
    { for key, sub in google_pubsub_subscription.push : key => sub.name },
    { for key, sub in google_pubsub_subscription.pull : key => sub.name },
  )
}

# The dispatch topic's dead letters go to the worker code, which fails the turn each names
# (with the reason in the session's stream): pushed to the dispatch function in push mode,
# pulled by the worker in pull mode. The lifecycle topic's are kept for inspection (pull).
resource "google_pubsub_subscription" "dead_letter" {
  for_each                   = local.topics
  project                    = var.project
  name                       = "${each.value}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60

  dynamic "push_config" {
    for_each = each.key == "dispatch" && var.worker_mode == "push" ? [1] : []
    content {
      push_endpoint = var.dispatch_url
      oidc_token {
        service_account_email = var.push_account_email
        audience              = var.dispatch_url
      }
      attributes = {
        x-goog-version = "v1"
      }
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# The pull worker reads exactly its subscriptions (no project-wide Pub/Sub role).
resource "google_pubsub_subscription_iam_member" "worker" {
  for_each = var.worker_mode == "pull" ? merge(
    { for key, sub in google_pubsub_subscription.pull : key => sub.name },
    { dispatch-dead-letter = google_pubsub_subscription.dead_letter["dispatch"].name },
  ) : {}
  project      = var.project
  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = var.worker_member
}

resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = local.publisher_set
  project  = var.project
  topic    = google_pubsub_topic.topics[each.value[0]].name
  role     = "roles/pubsub.publisher"
  member   = var.publishers[each.value[1]]
}

# Pub/Sub itself forwards undeliverable messages and signs push OIDC tokens.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.topics
  project  = var.project
  topic    = google_pubsub_topic.dead_letter[each.key].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = local.topics
  project      = var.project
  subscription = local.sources[each.key]
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "google_service_account_iam_member" "push_token_creator" {
  service_account_id = "projects/${var.project}/serviceAccounts/${var.push_account_email}"
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

output "topics" {
  value = { for key, topic in google_pubsub_topic.topics : key => topic.name }
}

output "subscriptions" {
  description = "The subscription of each topic (push or pull, per worker_mode)."
  value       = local.sources
}

output "dead_letter_subscriptions" {
  value = { for key, sub in google_pubsub_subscription.dead_letter : key => sub.name }
}
