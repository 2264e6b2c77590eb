variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region for Cloud SQL, Cloud Tasks and the functions."
  type        = string
  default     = "us-central1"
}

variable "environment" {
  description = "Short environment name (dev, prod); prefixes resource names."
  type        = string
}

variable "source_bucket" {
  description = "Bucket holding the packaged function sources (scripts/package_functions.py)."
  type        = string
}

variable "source_version" {
  description = "Version of the packaged sources to deploy (the commit SHA Cloud Build uploaded)."
  type        = string
}

variable "database_tier" {
  description = "Cloud SQL machine tier."
  type        = string
  default     = "db-custom-1-3840"
}

variable "database_availability" {
  description = "ZONAL or REGIONAL (high availability)."
  type        = string
  default     = "ZONAL"
}

variable "deletion_protection" {
  description = "Refuse to destroy the database (on in prod)."
  type        = bool
  default     = true
}

variable "functions" {
  description = "Scaling per function; see README (Deploying) for why these numbers. The gateway's entry is unused when gateway_server is talon (gateway_service sizes it then)."
  type = map(object({
    min_instances = number
    max_instances = number
    concurrency   = number
    memory        = string
    cpu           = string
    timeout       = number
  }))
}

variable "model_key_secrets" {
  description = "Secret Manager secrets that model profiles reference in apiKeyFrom (ids or projects/P/secrets/S names); the worker (dispatch) may read them, nothing else may."
  type        = list(string)
  default     = []
}

variable "mcp_header_secrets" {
  description = "Secret Manager secret ids that MCPServer headers reference; the worker (dispatch) may read them."
  type        = list(string)
  default     = []
}

variable "trace_sample_ratio" {
  description = "Share of new traces (turns, requests) exported to Cloud Trace, 0 to 1; a trace its caller sampled is always kept."
  type        = number
  default     = 0.1
  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio must be between 0 and 1."
  }
}

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) that Talon's alerts notify; empty: the alerts open incidents only."
  type        = list(string)
  default     = []
}

variable "alert_turn_failure_ratio" {
  description = "Alert when more than this share of turns fail over 10 minutes."
  type        = number
  default     = 0.1
}

variable "alert_outbox_age_seconds" {
  description = "Alert when an outbox row has waited this long to be delivered."
  type        = number
  default     = 300
}

variable "alert_schedule_lateness_seconds" {
  description = "Alert when schedule fires queue their turns this late (p99)."
  type        = number
  default     = 60
}

variable "worker_mode" {
  description = "push: Pub/Sub pushes turns to the dispatch function. pull: a long-running worker (talon worker, worker.pullMode) consumes pull subscriptions by streaming pull; see README (Deploying, Pull mode)."
  type        = string
  default     = "push"
  validation {
    condition     = contains(["push", "pull"], var.worker_mode)
    error_message = "worker_mode is push or pull."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of a Pub/Sub message before it is dead-lettered (the turn it names then fails); Pub/Sub accepts 5 to 100."
  type        = number
  default     = 10
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub's dead-letter policy takes 5 to 100 delivery attempts."
  }
}

variable "worker_image" {
  description = "The pull worker's image (Dockerfile.worker; cloudbuild.yaml builds and pushes it). Used when worker_mode is pull."
  type        = string
  default     = ""
}

variable "worker" {
  description = "The pull worker's size: instances (fixed), turns run at once per instance, CPU and memory per instance."
  type = object({
    instances   = number
    concurrency = number
    cpu         = string
    memory      = string
  })
  default = { instances = 1, concurrency = 8, cpu = "1", memory = "1Gi" }
}

variable "grpc" {
  description = "Scaling of the gRPC Cloud Run service (talon.v1); see README (gRPC)."
  type = object({
    min_instances = number
    max_instances = number
    concurrency   = number
    memory        = string
    cpu           = string
    timeout       = number
  })
}

variable "gateway_server" {
  description = "What serves the gateway. functions-framework: a Cloud Run function (functions[\"gateway\"]), where each open SSE stream holds one of its THREADS threads (about 15 streams per instance at concurrency 40). talon: a Cloud Run service (gateway_service) running the same packaged function under `python -m talon.serve`, whose stream hub holds open streams without a thread (up to Cloud Run's 1000 requests per instance). See README (Deploying, Which server serves the gateway)."
  type        = string
  default     = "functions-framework"
  validation {
    condition     = contains(["functions-framework", "talon"], var.gateway_server)
    error_message = "gateway_server is functions-framework or talon."
  }
}

variable "gateway_service" {
  description = "The gateway's Cloud Run service when gateway_server is talon: instances, requests per instance (open streams included; Cloud Run allows at most 1000), threads for the other requests (THREADS), memory, CPU and request timeout (a stream's longest life)."
  type = object({
    min_instances = number
    max_instances = number
    concurrency   = number
    threads       = number
    memory        = string
    cpu           = string
    timeout       = number
  })
  default = { min_instances = 0, max_instances = 5, concurrency = 1000, threads = 64, memory = "512Mi", cpu = "1", timeout = 3600 }
  validation {
    condition     = var.gateway_service.concurrency >= 1 && var.gateway_service.concurrency <= 1000
    error_message = "Cloud Run takes 1 to 1000 concurrent requests per instance."
  }
  validation {
    condition     = var.gateway_service.threads >= 1
    error_message = "gateway_service.threads must be at least 1."
  }
  validation {
    condition     = var.gateway_service.timeout >= 1 && var.gateway_service.timeout <= 3600
    error_message = "Cloud Run's request timeout is 1 to 3600 seconds."
  }
}
