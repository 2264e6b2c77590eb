# Cloud SQL for PostgreSQL. The functions connect through the Cloud SQL Python Connector
# (IAM-authorised, TLS) over the public IP with no authorised networks, so nothing but the
# connector can reach it and no VPC connector is needed.

variable "project" { type = string }
variable "region" { type = string }
variable "prefix" { type = string }
variable "tier" { type = string }
variable "availability" { type = string }
variable "deletion_protection" { type = bool }
variable "accessors" {
  description = "IAM members (the functions) that read the database password."
  type        = map(string)
}

resource "google_sql_database_instance" "talon" {
  project             = var.project
  name                = "${var.prefix}-pg"
  region              = var.region
  database_version    = "POSTGRES_15"
  deletion_protection = var.deletion_protection

  settings {
    tier              = var.tier
    availability_type = var.availability
    disk_autoresize   = true

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "03:00"
      transaction_log_retention_days = 7
      backup_retention_settings {
        retained_backups = 14
      }
    }

    ip_configuration {
      ipv4_enabled = true
      ssl_mode     = "ENCRYPTED_ONLY"
    }

    database_flags {
      name  = "max_connections"
      value = "200"
    }

    insights_config {
      query_insights_enabled = true
    }
  }
}

resource "google_sql_database" "talon" {
  project  = var.project
  instance = google_sql_database_instance.talon.name
  name     = "talon"
}

resource "random_password" "talon" {
  length  = 32
  special = false
}

resource "google_sql_user" "talon" {
  project  = var.project
  instance = google_sql_database_instance.talon.name
  name     = "talon"
  password = random_password.talon.result
}

resource "google_secret_manager_secret" "password" {
  project   = var.project
  secret_id = "${var.prefix}-db-password"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "password" {
  secret      = google_secret_manager_secret.password.id
  secret_data = random_password.talon.result
}

resource "google_secret_manager_secret_iam_member" "password" {
  for_each  = var.accessors
  project   = var.project
  secret_id = google_secret_manager_secret.password.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

output "instance_connection_name" {
  value = google_sql_database_instance.talon.connection_name
}

output "database_name" {
  value = google_sql_database.talon.name
}

output "user" {
  value = google_sql_user.talon.name
}

output "password_secret_id" {
  value = google_secret_manager_secret.password.secret_id
}
