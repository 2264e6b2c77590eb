"""The gateway's HTTP adapter (Flask/werkzeug), over the transport-agnostic services."""
