terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.14.1"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.6.3"
    }
  }

  # Each environment keeps its state in its own bucket:
  #   terraform init -backend-config="bucket=<project>-tfstate" -backend-config="prefix=talon/<env>"
  backend "gcs" {}
}

provider "google" {
  project = var.project
  region  = var.region
}
