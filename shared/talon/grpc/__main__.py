"""`python -m talon.grpc`: the gRPC server on its own, as `talon dev` and the Cloud Run
service run it. The address: --address, else 0.0.0.0:$PORT on Cloud Run, else
gateway.grpcAddr."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from talon.grpc.server import DEFAULT_THREADS, PortTaken, build_server
from talon.logs import configure_logging
from talon.services import Services
from talon.telemetry.setup import configure_telemetry, flush_telemetry, metrics_exported

STOP_GRACE_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m talon.grpc")
    parser.add_argument("--address", help="host:port to listen on")
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("THREADS") or DEFAULT_THREADS),
        help=f"concurrent calls, open streams included (default $THREADS or {DEFAULT_THREADS})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    configure_logging()  # TALON_LOG_LEVEL, TALON_LOG_FORMAT (json on Cloud Run)
    configure_telemetry()  # OTEL_* (see README, Observability)
    services = Services.start()
    if metrics_exported():
        services.report_gauges()
    address = args.address or (
        f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT")
        else services.settings.gateway.grpc_addr
    )  # fmt: skip
    try:
        server, port = build_server(services, address, threads=args.threads)
    except PortTaken as exc:
        print(f"talon grpc: {exc}", file=sys.stderr)
        services.close()
        return 2
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    logging.getLogger("talon.grpc").info("serving gRPC on %s (port %d)", address, port)
    stopped.wait()
    server.stop(STOP_GRACE_SECONDS).wait()
    services.close()
    flush_telemetry()
    return 0


if __name__ == "__main__":
    sys.exit(main())
