"""The pages a browser loads: the try-it page (``/``) and the API documentation (``/docs``).

Both work offline: Swagger UI's files come from the ``swagger-ui-bundle-v2`` package
(Swagger UI 5.31, Apache-2.0) and are served from ``/docs/assets/``, never from a CDN.
Each page sends a Content-Security-Policy that admits only its own inline script (by
hash) and same-origin requests; the edge adds ``nosniff`` and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from gateway.errors import NotFoundError

router = APIRouter(include_in_schema=False)

# Swagger UI's files that /docs uses (the bundle also holds source maps and ES builds).
SWAGGER_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def swagger_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def page_csp(html: str, images: str = "'self'") -> str:
    """A policy for ``html``: scripts only from this origin and its own inline scripts (by
    SHA-256), requests only to this origin, no framing, no plugins, no foreign forms."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


@cache
def _try_it_page() -> tuple[str, str]:
    html = resources.files("gateway").joinpath("static/index.html").read_text()
    return html, page_csp(html, images="'self' blob: data:")


@router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    """A small page to try the API: enrol, verify, identify, live video, audit."""
    html, csp = _try_it_page()
    return HTMLResponse(html, headers={"Content-Security-Policy": csp})


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, every file served from here."""
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )
    html = bytes(page.body).decode()
    # Swagger UI draws its own logo and validator badge from data: URLs.
    csp = page_csp(html, images="'self' data:")
    return HTMLResponse(html, headers={"Content-Security-Policy": csp})


@router.get("/docs/assets/{name}")
def docs_asset(name: str) -> FileResponse:
    media = SWAGGER_ASSETS.get(name)
    if media is None:
        raise NotFoundError(f"no asset {name}")
    return FileResponse(
        swagger_dir() / name, media_type=media, headers={"Cache-Control": "max-age=86400"}
    )
