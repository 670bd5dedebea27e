"""The web console: `GET /ui/` (index.html) and `GET /ui/<asset>`, the files shipped in
kvs/ui/static/, and `GET /` redirecting a browser there.

Rule: the set of assets is read once, when the app is built, into a table keyed by name; a
request only looks its name up in that table. No path from a request ever reaches the file
system, so `..`, encoded slashes or NUL bytes in it can only miss (a JSON 404). The assets
are public (no token: the page must load before its login form), hold no secret, and every
answer carries a strict Content-Security-Policy: the console runs only its own scripts and
talks only to this node."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from quart import Blueprint, Response, redirect, request

from kvs.api.errors import ApiError

UI_PREFIX = "/ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """Every file under kvs/ui/static/ with a known type, by its name relative to it."""
    assets: dict[str, Asset] = {}
    root = resources.files("kvs.ui").joinpath("static")

    def walk(folder: object, prefix: str) -> None:
        for entry in folder.iterdir():  # type: ignore[attr-defined]
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            suffix = "." + entry.name.rpartition(".")[2]
            if suffix in _TYPES:
                assets[name] = Asset(entry.read_bytes(), _TYPES[suffix])

    walk(root, "")
    return assets


def is_console_path(path: str) -> bool:
    """Paths the console serves without a token (static files, no secrets)."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def wants_html(accept: str) -> bool:
    """A browser navigating (Accept names text/html), not a JSON client."""
    return "text/html" in accept.lower()


def console_blueprint(assets: dict[str, Asset]) -> Blueprint:
    bp = Blueprint("console", __name__)

    def answer(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise ApiError(404, "no such console file", headers=dict(SECURITY_HEADERS))
        response = Response(asset.body, content_type=asset.content_type)
        response.headers.update(SECURITY_HEADERS)
        return response

    # Every method, so that what is not a browser's GET stays the JSON 404 it always was.
    @bp.route("/", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def root() -> Response:
        if request.method != "GET" or not wants_html(request.headers.get("Accept", "")):
            raise ApiError(404, "not found; the console is at /ui/")
        return redirect(UI_PREFIX + "/", 302)  # type: ignore[return-value]

    @bp.route(UI_PREFIX, methods=["GET"])
    async def ui_bare() -> Response:
        return redirect(UI_PREFIX + "/", 301)  # type: ignore[return-value]

    @bp.route(UI_PREFIX + "/", methods=["GET"])
    async def index() -> Response:
        return answer("index.html")

    @bp.route(UI_PREFIX + "/<path:name>", methods=["GET"])
    async def asset(name: str) -> Response:
        return answer(name)

    return bp
