"""Logging: JSON lines on Cloud Run (picked up as structured logs), plain text locally."""

from __future__ import annotations

import json
import logging
import os
import sys

from talon.telemetry.tracing import current_ids

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            **{k: v for k, v in vars(record).items() if k not in _STANDARD},
        }
        ids = current_ids()
        if ids is not None:  # the fields Cloud Logging joins a line to its trace by
            trace_id, span_id, sampled = ids
            project = os.environ.get("GOOGLE_CLOUD_PROJECT")
            entry[TRACE_FIELD] = f"projects/{project}/traces/{trace_id}" if project else trace_id
            entry[SPAN_FIELD] = span_id
            entry[SAMPLED_FIELD] = sampled
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not when configured, so a
    swapped stream (test capture, a daemonised process) never receives a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


_configured = False  # the process's root logger has Talon's handler


def configure_logging() -> None:
    """Idempotent; format from TALON_LOG_FORMAT (json|text), level from TALON_LOG_LEVEL."""
    global _configured
    if _configured:
        return
    root = logging.getLogger()
    fmt = os.environ.get("TALON_LOG_FORMAT") or ("json" if os.environ.get("K_SERVICE") else "text")
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(os.environ.get("TALON_LOG_LEVEL", "INFO").upper())
    # One line per outbound request from the HTTP client library is noise at INFO.
    # Per-request INFO lines from HTTP clients (httpx for models, httpx2 and the MCP client
    # for tool servers) would drown the worker's own log.
    for noisy in ("httpx", "httpx2", "mcp.client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
