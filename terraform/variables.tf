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
  description = "Scaling per function; see README (Deploying) for why these numbers."
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
