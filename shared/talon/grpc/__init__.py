"""The gRPC surface (package talon.v1): the adapter between grpcio and the same calls the
HTTP API makes (talon.actions and the core services). grpc is imported here only."""
