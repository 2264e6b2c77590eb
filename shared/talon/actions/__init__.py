"""What a call to Talon's API does, whichever surface it arrives on (HTTP or gRPC): the
rules above the core services that depend on the caller (its namespaces and role) or that
assemble a reply from several services. The transports only parse and format."""
