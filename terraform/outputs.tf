output "gateway_url" {
  description = "The Talon API (public; Talon's own bearer tokens)."
  value       = module.functions.urls["gateway"]
}

output "grpc_url" {
  description = "The gRPC surface (talon.v1 over HTTP/2 with TLS; host:443 for grpcurl)."
  value       = module.grpc.url
}

output "ops_mcp_url" {
  description = "The talon-ops MCP endpoint, served through the gateway (the ops_mcp function itself is private)."
  value       = "${module.functions.urls["gateway"]}/mcp/talon-ops"
}

output "admin_token_secret" {
  description = "Secret Manager secret holding the bootstrap admin token (add a version to set it)."
  value       = module.iam.admin_token_secret_id
}

output "database_instance" {
  value = module.database.instance_connection_name
}
