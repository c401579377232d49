"""``/ui``: the web chat page and its files (public: the page asks for an API key itself).

The files are plain HTML, CSS and JavaScript in ``static/`` (no build step, nothing fetched
from elsewhere); they talk to the server's own ``/v1`` and ``/props`` endpoints.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from ggufworker.server.core.openapi import openai_errors

router = APIRouter(tags=["web page"])

#: the files under /ui/assets/ and their media types (nothing else is served from the folder)
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# the page may run only its own scripts and styles and talk only to this server; model output
# is inserted as text, and this policy stops anything that slips through from running
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
AUTH_NONE = b'<meta name="ggufworker-auth" content="none">'
AUTH_REQUIRED = b'<meta name="ggufworker-auth" content="required">'
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


def read_static(name: str) -> bytes:
    """A file of the page from the package."""
    return resources.files("ggufworker.server.ui").joinpath("static").joinpath(name).read_bytes()


@router.get(
    "/ui",
    response_class=HTMLResponse,
    responses={200: {"description": "the chat page", "content": {"text/html": {}}}},
    summary="the web chat page",
)
async def page(request: Request) -> HTMLResponse:
    html = read_static("index.html")
    if request.app.state.settings.api_keys:
        # the page asks for the key before its first call instead of after a 401
        html = html.replace(AUTH_NONE, AUTH_REQUIRED)
    return HTMLResponse(html, headers=_HEADERS)


@router.get(
    "/ui/assets/{name}",
    response_class=Response,
    responses={
        200: {
            "description": "a script, style sheet or icon of the page",
            "content": {media.split(";")[0]: {} for media in ASSETS.values()},
        },
        **openai_errors(404),
    },
    summary="a file of the web chat page",
)
async def asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise HTTPException(404, f"no such file of the web page: {name!r}")
    return Response(read_static(name), media_type=media, headers=_HEADERS)
