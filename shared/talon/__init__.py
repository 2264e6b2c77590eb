"""Talon: an open control plane for durable AI agents."""

API_VERSION = "talon.dev/v1alpha1"
__version__ = "0.1.0"
