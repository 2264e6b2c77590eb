"""The dashboard's static files, served by the gateway at /ui/ (same origin as the API, so the
browser needs no CORS to call it).

The single-page app is built by Vite into `shared/ui/dist` (`scripts/setup.sh`, `ensure_ui`);
the packaged gateway function carries it as `ui/dist` beside `talon/`, which is the same path
relative to the package, so one default finds it in both. `TALON_UI_DIR` points elsewhere.

Files under `assets/` have content hashes in their names, so they are cached for a year;
`index.html` must be revalidated every time (it names the current hashes). Any other path is
a client-side route (`/ui/ns/acme/agents/customer-support`): it gets `index.html` and the
app's router draws the page, so deep links survive a reload.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

import flask
from werkzeug.security import safe_join
from werkzeug.utils import redirect, send_file
from werkzeug.wrappers import Response as WerkzeugResponse

from talon.api.http import error_response

PREFIX = "/ui"
UI_DIR_ENV = "TALON_UI_DIR"
IMMUTABLE = "public, max-age=31536000, immutable"
# The app loads only its own scripts and styles; it may call any gateway the user saves
# (another origin), hence the open connect-src; no page may frame it (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self' http: https:; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)
# Python's table depends on the machine's /etc/mime.types; these must be right everywhere
# (a module script served as text/plain is refused by the browser). werkzeug adds the
# charset to text types.
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".map": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
}


def default_dist() -> Path:
    configured = os.environ.get(UI_DIR_ENV)
    if configured:
        return Path(configured)
    # shared/talon/api/ui.py -> shared/ui/dist (repo); talon/api/ui.py -> ui/dist (zip).
    return Path(__file__).resolve().parents[2] / "ui" / "dist"


def _json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> flask.Response:
    return error_response(status, code, message, headers=headers)


def _built(response: WerkzeugResponse) -> flask.Response:
    """Werkzeug's helpers build the class they are given (flask.Response here) but are typed
    with their own base class."""
    assert isinstance(response, flask.Response)
    return response


class StaticUI:
    def __init__(self, dist: Path | None = None) -> None:
        self.dist = dist or default_dist()

    @staticmethod
    def handles(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def __call__(self, request: flask.Request) -> flask.Response:
        if request.method not in ("GET", "HEAD"):
            return _json(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use GET, HEAD",
                {"Allow": "GET, HEAD"},
            )
        if request.path == PREFIX:
            # Relative asset URLs in index.html resolve against /ui/, not /.
            return _built(redirect(PREFIX + "/", code=308, Response=flask.Response))
        index = self.dist / "index.html"
        if not index.is_file():
            return _json(
                503,
                "ui_not_built",
                f"the dashboard is not built ({index} is missing): run `npm ci && npm run build` "
                "in shared/ui, or ./scripts/dev, which does",
            )
        relative = request.path[len(PREFIX) + 1 :]
        found = safe_join(str(self.dist), relative) if relative else None
        if found is not None and Path(found).is_file():
            immutable = relative.startswith("assets/")
            return self._file(request, Path(found), IMMUTABLE if immutable else "no-cache")
        if relative.startswith("assets/") or Path(relative).suffix in _TYPES:
            # A missing file, e.g. an asset of an older build: answering it with index.html
            # would hand the browser HTML where it expects a script.
            return _json(404, "not_found", f"no file {request.path}")
        return self._file(request, index, "no-cache")

    @staticmethod
    def _file(request: flask.Request, path: Path, cache_control: str) -> flask.Response:
        mimetype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        response = send_file(
            path,
            request.environ,
            mimetype=mimetype or "application/octet-stream",
            conditional=True,
            etag=True,
            max_age=None,
            response_class=flask.Response,
        )
        response = _built(response)
        response.headers["Cache-Control"] = cache_control
        response.headers["X-Content-Type-Options"] = "nosniff"
        if path.suffix == ".html":
            response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            response.headers["Referrer-Policy"] = "no-referrer"
        return response
