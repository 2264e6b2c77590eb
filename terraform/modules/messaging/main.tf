# The session-dispatch and lifecycle topics, each pushed to the dispatch function with an
# OIDC token, with retry backoff and a dead-letter topic.

variable "project" { type = string }
variable "prefix" { type = string }
variable "dispatch_url" { type = string }
variable "push_account_email" { type = string }
variable "publishers" {
  description = "IAM members that publish (every function relays its transaction outbox)."
  type        = map(string)
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
  for_each = local.topics
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
    max_delivery_attempts = 20
  }
}

# Keep dead letters for inspection: a pull subscription on each dead-letter topic.
resource "google_pubsub_subscription" "dead_letter" {
  for_each                   = local.topics
  project                    = var.project
  name                       = "${each.value}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  message_retention_duration = "604800s"
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
  subscription = google_pubsub_subscription.push[each.key].name
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
  value = { for key, sub in google_pubsub_subscription.push : key => sub.name }
}
