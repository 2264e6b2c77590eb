# terraform apply -var-file=environments/dev.tfvars -var project=... -var source_version=...
environment           = "dev"
region                = "us-central1"
database_tier         = "db-custom-1-3840"
database_availability = "ZONAL"
deletion_protection   = false

functions = {
  gateway   = { min_instances = 0, max_instances = 5, concurrency = 40, memory = "512Mi", cpu = "1", timeout = 3600 }
  dispatch  = { min_instances = 0, max_instances = 10, concurrency = 8, memory = "1Gi", cpu = "1", timeout = 900 }
  scheduler = { min_instances = 0, max_instances = 3, concurrency = 20, memory = "512Mi", cpu = "1", timeout = 120 }
  ops_mcp   = { min_instances = 0, max_instances = 2, concurrency = 20, memory = "512Mi", cpu = "1", timeout = 300 }
}

# The gRPC Cloud Run service: like the gateway, it mostly waits on PostgreSQL and holds streams.
grpc = { min_instances = 0, max_instances = 3, concurrency = 64, memory = "512Mi", cpu = "1", timeout = 3600 }
