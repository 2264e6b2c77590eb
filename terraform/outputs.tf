output "gateway_url" {
  description = "The Talon API (public; Talon's own bearer tokens): the gateway function's URL, or the gateway service's (gateway_server = \"talon\")."
  value       = local.gateway_url
}

output "grpc_url" {
  description = "The gRPC surface (talon.v1 over HTTP/2 with TLS; host:443 for grpcurl)."
  value       = module.grpc.url
}

output "ops_mcp_url" {
  description = "The talon-ops MCP endpoint, served through the gateway (the ops_mcp function itself is private)."
  value       = "${local.gateway_url}/mcp/talon-ops"
}

output "admin_token_secret" {
  description = "Secret Manager secret holding the bootstrap admin token (add a version to set it)."
  value       = module.iam.admin_token_secret_id
}

output "database_instance" {
  value = module.database.instance_connection_name
}
