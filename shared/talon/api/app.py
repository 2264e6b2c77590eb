"""The gateway: one callable from a Flask request to a Flask response.

functions-framework hands every path to the `gateway` function; this class routes it with a
werkzeug URL map built from the route table, authenticates, enforces namespace isolation
(an invisible namespace is indistinguishable from a missing one), and maps errors to JSON.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule

from talon.api.agent_tools import AgentTools
from talon.api.cors import Cors
from talon.api.http import error_response, http_request_entry, json_response
from talon.api.openapi import build_openapi
from talon.api.resources import resource_routes
from talon.api.routing import Answer, Context, Route
from talon.api.schedules import schedule_routes
from talon.api.sessions import session_routes
from talon.api.tokens import token_routes
from talon.api.transport import check_request
from talon.api.ui import StaticUI
from talon.api.usage import usage_routes
from talon.auth.access import authenticate, authorize, refuse_tool_tokens
from talon.auth.principal import Principal
from talon.errors import TalonError
from talon.services import Services
from talon.telemetry import tracing

log = logging.getLogger("talon.gateway")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ROUTE_KEY = "talon.route"  # the request's matched route, in its WSGI environ


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.ops_proxy = None
        if services.settings.gateway.ops_mcp_upstream:
            from talon.api.ops_proxy import OpsProxy, google_id_tokens

            gateway = services.settings.gateway
            id_tokens = google_id_tokens() if gateway.ops_mcp_id_token else None
            self.ops_proxy = OpsProxy(gateway.ops_mcp_upstream, id_tokens=id_tokens)
        self.ui = StaticUI()
        self.cors = Cors(services.settings.gateway.allowed_origins)
        self.routes: list[Route] = [
            Route(
                "GET",
                "/healthz",
                self._healthz,
                "Liveness and database check.",
                role=None,
                tags=("meta",),
                answers=(
                    Answer(200, "Health"),
                    Answer(503, "Health", description="The database is unreachable."),
                ),
            ),
            Route(
                "GET",
                "/v1/openapi.json",
                self._openapi,
                "This OpenAPI document.",
                role=None,
                tags=("meta",),
                answers=(Answer(200, {"type": "object", "description": "OpenAPI 3.1"}),),
            ),
            *token_routes(),
            *resource_routes(),
            *session_routes(),
            *schedule_routes(),
            *usage_routes(),
            *AgentTools(services).routes(),
        ]
        self._by_endpoint = {r.endpoint: r for r in self.routes}
        self.url_map = Map(
            [
                Rule(r.rule, endpoint=r.endpoint, methods=[r.method], strict_slashes=False)
                for r in self.routes
            ],
            merge_slashes=False,
        )
        self._openapi_doc = build_openapi(self.routes)

    def __call__(self, request: flask.Request) -> flask.Response:
        started = time.perf_counter()
        given_id = request.headers.get("X-Request-Id", "")
        request_id = given_id if _REQUEST_ID_RE.match(given_id) else uuid.uuid4().hex
        principal: Principal | None = None
        if self.ui.handles(request.path):  # the dashboard's files: public, no token
            response = self.ui(request)
            response.headers["X-Request-Id"] = request_id
            return response
        preflight = self.cors.preflight(request)
        if preflight is not None:
            preflight.headers["X-Request-Id"] = request_id
            return preflight
        # The request's span continues the caller's trace (Cloud Run's front end sends one).
        with tracing.span(request.method, parent=request.headers.get("traceparent"),
                          kind=tracing.SpanKind.SERVER) as span:  # fmt: skip
            response, principal, proxied = self._handle(request, request_id, span)
            tracing.set_attributes(span, {
                "http.request.method": request.method, "url.path": request.path,
                "http.response.status_code": response.status_code,
                "talon.request_id": request_id,
                "talon.token_id": principal.token_id if principal else None,
            })  # fmt: skip
            if response.status_code >= 500:
                tracing.fail(span, f"HTTP {response.status_code}")
            if proxied:  # talon-ops answers for itself
                return response
            response.headers["X-Request-Id"] = request_id
            self.cors.decorate(request, response)
            if not log.isEnabledFor(logging.INFO):
                return response  # the access log's entry is not free (the request's URL)
            duration = time.perf_counter() - started
            log.info(
                "%s %s -> %d",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "request_id": request_id,
                    "duration_ms": round(duration * 1000, 2),
                    "token_id": principal.token_id if principal else None,
                    "httpRequest": http_request_entry(request, response, duration),
                },
            )
        return response

    def match(self, request: flask.Request) -> tuple[str, dict[str, Any]]:
        """The request's route (its endpoint) and path arguments, or werkzeug's routing
        exception. Matched once per request: the front door asks first, for streams."""
        cached = request.environ.get(_ROUTE_KEY)
        if cached is not None and cached[0] is self.url_map:
            endpoint, args = cached[1]
        else:
            endpoint, args = self.url_map.bind_to_environ(request.environ).match()
            # Kept with the map that made it: another gateway's match is not this one's.
            request.environ[_ROUTE_KEY] = (self.url_map, (endpoint, args))
        return str(endpoint), dict(args)

    def _handle(
        self, request: flask.Request, request_id: str, span: tracing.Span
    ) -> tuple[flask.Response, Principal | None, bool]:
        """The route's answer, who asked, and whether talon-ops answered (as it is)."""
        principal: Principal | None = None
        try:
            check_request(request)
            if self.ops_proxy is not None and self.ops_proxy.handles(request.path):
                proxied = self.ops_proxy(request, self.services.settings.gateway.max_body_bytes)
                return proxied, None, True
            endpoint, args = self.match(request)
            route = self._by_endpoint[endpoint]
            span.update_name(f"{request.method} {route.rule}")
            span.set_attribute("http.route", route.rule)
            if route.role is not None:
                principal = authenticate(
                    self.services.tokens, request.headers.get("Authorization", "")
                )
                refuse_tool_tokens(principal)
            # A malformed segment names nothing, in any namespace: refused before the
            # visibility check, which it cannot tell anything about.
            route.check_path(args)
            if route.role is not None:
                assert principal is not None
                authorize(principal, route.role, args.get("ns"))
            params = route.parse_params(request)
            ctx = Context(request, self.services, principal, request_id, params)
            response = self._to_response(route, route.handler(ctx, **args))
        except TalonError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            response = json_response(exc.status, exc.to_dict(), headers)
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            response = error_response(
                405, "method_not_allowed",
                f"{request.method} is not allowed here; use {allowed}", headers={"Allow": allowed},
            )  # fmt: skip
        except HTTPException as exc:
            code = exc.code or 400
            name = "not_found" if code == 404 else "bad_request"
            message = (
                f"no route for {request.method} {request.path}"
                if code == 404
                else (exc.description or "bad request")
            )
            response = error_response(code, name, message)
        except Exception:
            log.exception("unhandled error (request %s)", request_id)
            response = error_response(500, "internal", f"internal error; request id {request_id}")
        return response, principal, False

    @staticmethod
    def _to_response(route: Route, result: Any) -> flask.Response:
        if isinstance(result, flask.Response):
            return result
        if isinstance(result, tuple):
            status, payload = result
            return json_response(status, payload)
        return json_response(route.response_status, result)

    def _healthz(self, ctx: Context) -> tuple[int, dict[str, Any]]:
        try:
            with self.services.db.transaction() as tx:
                tx.scalar("SELECT 1")
        except TalonError as exc:
            return 503, {"status": "unavailable", "database": exc.message}
        return 200, {"status": "ok"}

    def _openapi(self, ctx: Context) -> dict[str, Any]:
        return self._openapi_doc
