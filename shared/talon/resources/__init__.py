"""Resource kinds, manifest parsing and template resolution."""
