"""/ui: the dashboard, static files from the package (hybrid_router/ui) read by the browser.

The page itself is public: it holds no data, asks for an API key when the router has users,
and reads everything through the JSON API and its event streams with that key.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# Only the page's own files may run or be fetched: were some job's text ever rendered as
# markup by mistake, it could neither run a script nor send the key anywhere.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load, so an upgraded router never runs yesterday's script.
    "Cache-Control": "no-cache",
}


class Dashboard(StaticFiles):
    """The dashboard's files, with headers that keep the page to itself."""

    def __init__(self) -> None:
        super().__init__(directory=UI_DIR, html=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response
