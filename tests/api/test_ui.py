"""/ui: the dashboard's files come from the package, work offline, and keep to themselves."""

from __future__ import annotations

import re
from pathlib import Path

from hybrid_router.api.ui import UI_DIR
from tests.api.conftest import default_config, started

# Anything the browser would fetch from elsewhere: the page must work with no internet.
ELSEWHERE = re.compile(r"""(https?:)?//[\w.-]+\.\w+/|@import|url\(""")


async def test_the_dashboard_is_served_from_the_package_without_a_key(tmp_path: Path) -> None:
    config = default_config(tmp_path, users={"alice": {"api_key_sha256": "ab" * 32}})
    async with started(config) as client:
        moved = await client.get("/ui")
        assert moved.status_code == 307 and moved.headers["location"].endswith("/ui/")
        page = await client.get("/ui/")
        assert page.status_code == 200, page.text  # public: the page asks for the key itself
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        # Every file the page names is served, and none comes from elsewhere.
        named = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert {"app.js", "style.css", "favicon.svg"} <= set(named)
        for name in named:
            asset = await client.get(f"/ui/{name}")
            assert asset.status_code == 200, name
            # (an SVG's xmlns names its dialect; nothing is fetched from it)
            text = asset.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert not ELSEWHERE.search(text), name
        assert (await client.get("/ui/nope.js")).status_code == 404
        # The data stays behind the key.
        assert (await client.get("/queue/status")).status_code == 401


def test_the_script_never_renders_data_as_markup() -> None:
    script = (UI_DIR / "app.js").read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    # The key travels in a header, never in a URL, and is kept in the tab only.
    assert "localStorage" not in script
    assert not re.search(r"searchParams\.set\([^)]*key", script)


async def test_the_openapi_document_leaves_the_page_out(tmp_path: Path) -> None:
    async with started(default_config(tmp_path)) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]
