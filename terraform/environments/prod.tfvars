# terraform apply -var-file=environments/prod.tfvars -var project=... -var source_version=...
environment           = "prod"
region                = "us-central1"
database_tier         = "db-custom-2-7680"
database_availability = "REGIONAL"
deletion_protection   = true

functions = {
  gateway   = { min_instances = 1, max_instances = 20, concurrency = 80, memory = "1Gi", cpu = "2", timeout = 3600 }
  dispatch  = { min_instances = 1, max_instances = 50, concurrency = 8, memory = "1Gi", cpu = "1", timeout = 900 }
  scheduler = { min_instances = 0, max_instances = 5, concurrency = 40, memory = "512Mi", cpu = "1", timeout = 120 }
  ops_mcp   = { min_instances = 0, max_instances = 3, concurrency = 20, memory = "512Mi", cpu = "1", timeout = 300 }
}

# The gRPC Cloud Run service: like the gateway, it mostly waits on PostgreSQL and holds streams.
grpc = { min_instances = 1, max_instances = 10, concurrency = 64, memory = "1Gi", cpu = "1", timeout = 3600 }

# What serves the gateway (README: Deploying, Which server serves the gateway). The default,
# functions-framework, is the gateway function above: each open SSE stream holds one of its
# THREADS (= concurrency) threads. "talon" serves the same packaged function under
# `python -m talon.serve` as a Cloud Run service sized here, whose open streams hold no thread:
# up to 1000 requests (open streams included) per instance, Cloud Run's maximum.
gateway_server  = "functions-framework"
gateway_service = { min_instances = 1, max_instances = 20, concurrency = 1000, threads = 64, memory = "1Gi", cpu = "2", timeout = 3600 }
