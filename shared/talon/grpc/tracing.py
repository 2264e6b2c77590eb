"""A server span for every gRPC call, as the HTTP API has one for every request: named
`<service>/<method>`, continuing the caller's trace (`traceparent` metadata), with the
call's status (OpenTelemetry's RPC conventions: `rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`). A call that ends with a status the caller caused (NOT_FOUND,
INVALID_ARGUMENT, ...) is not a failed span; one the server caused (INTERNAL, UNAVAILABLE,
...) is. A streaming call's span lasts as long as its stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from talon.telemetry import tracing

# The codes OpenTelemetry counts as a server's error on a server span.
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
}  # fmt: skip


class TracingInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.request_streaming:  # Talon has no client streams
            return handler
        name = details.method.lstrip("/")  # e.g. talon.v1.Sessions/PostMessage
        metadata = dict(details.invocation_metadata or ())
        value = metadata.get("traceparent")
        parent = value.decode("latin-1") if isinstance(value, bytes) else value
        service, _, method = name.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            def traced_unary(request: Any, context: grpc.ServicerContext) -> Any:
                with _CallSpan(name, parent, attributes, context) as call:
                    return call.run(lambda: unary(request, context))

            return grpc.unary_unary_rpc_method_handler(
                traced_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            def traced_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with _CallSpan(name, parent, attributes, context) as call:
                    yield from call.run_stream(lambda: streaming(request, context))

            return grpc.unary_stream_rpc_method_handler(
                traced_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


class _CallSpan:
    """The span of one call; the handler's exception (an abort) passes through unrecorded
    as a failure unless its status is a server error."""

    def __init__(
        self, name: str, parent: str | None, attributes: dict[str, str],
        context: grpc.ServicerContext,
    ) -> None:  # fmt: skip
        self._span_cm = tracing.span(
            name, parent=parent, kind=tracing.SpanKind.SERVER, attributes=attributes
        )
        self._context = context
        self._span: tracing.Span | None = None

    def __enter__(self) -> _CallSpan:
        self._span = self._span_cm.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._span_cm.__exit__(None, None, None)

    def run(self, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except BaseException:
            self._finish(failed=True)
            raise
        self._finish(failed=False)
        return result

    def run_stream(self, call: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        try:
            yield from call()
        except GeneratorExit:  # the client cancelled, or went away
            self._finish(failed=False, code=grpc.StatusCode.CANCELLED)
            raise
        except BaseException:
            self._finish(failed=True)
            raise
        self._finish(failed=False)

    def _finish(self, failed: bool, code: grpc.StatusCode | None = None) -> None:
        assert self._span is not None
        code = code or self._code()
        code = code or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
        tracing.set_attributes(self._span, {"rpc.grpc.status_code": code.value[0]})
        if code in _SERVER_ERRORS:
            tracing.fail(self._span, f"gRPC {code.name}")

    def _code(self) -> grpc.StatusCode | None:
        # What abort or set_code set: grpc's own contexts have code() (1.38 and later).
        code = getattr(self._context, "code", lambda: None)()
        return code if isinstance(code, grpc.StatusCode) else None
