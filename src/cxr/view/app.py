"""The `cxr view` web app (Starlette) and the ASGI layers that make it private.

Outermost first: `Guard` logs one access line per request (the token never written) and turns any
unexpected exception into a 500 with one masked log line (no traceback, which could carry a file
path with a patient folder); `TokenGate` answers 403 to any request without the token, and a
request carrying `?token=` gets the cookie and a redirect to the same address without it, so the
token leaves the address bar and the browser history; every response carries no-store cache
headers and a strict content security policy.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from cxr.core.errors import CxrError
from cxr.core.privacy import mask_subject
from cxr.view import filters, pages
from cxr.view.data import ViewData
from cxr.view.images import NotAvailable, Pixels

COOKIE = "cxr_view_token"
ACCESS_LOG = logging.getLogger("cxr.view.access")
SECURITY_HEADERS = [
    (b"cache-control", b"no-store, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
]


def _without_token(query: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"])


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


class TokenGate:
    """403 unless the request has the token as `?token=` (then: cookie and redirect) or cookie."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and _same(given, self.token):
            rest = _without_token(scope.get("query_string", b"").decode("latin-1"))
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return await response(scope, receive, send)
        cookie = request.cookies.get(COOKIE)
        if given is None and cookie is not None and _same(cookie, self.token):
            return await self.app(scope, receive, send)
        response = PlainTextResponse(
            "403 forbidden: open the address `cxr view` printed, with its token\n", 403
        )
        return await response(scope, receive, send)


class Guard:
    """Security headers on every response, one access-log line per request (path and query
    without the token), and unexpected errors as a 500 with one masked log line."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"status": 0}
        t0 = time.perf_counter()

        async def send_headers(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                names = {k for k, _ in SECURITY_HEADERS}
                message["headers"] = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in names
                ] + SECURITY_HEADERS
            await send(message)

        try:
            await self.app(scope, receive, send_headers)
        except Exception as exc:
            ACCESS_LOG.error("error: %s", mask_subject(f"{type(exc).__name__}: {exc}"))
            if not state["status"]:
                await send_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": b"500 internal error\n"})
        query = _without_token(scope.get("query_string", b"").decode("latin-1"))
        ACCESS_LOG.info(
            '%s "%s %s" %d %.0f ms',
            (scope.get("client") or ("-",))[0],
            scope["method"],
            mask_subject(scope["path"] + (f"?{query}" if query else "")),
            state["status"],
            1000 * (time.perf_counter() - t0),
        )


class ViewApp:
    """The routes over one ViewData and its pixels."""

    def __init__(self, data: ViewData, pixels: Pixels) -> None:
        self.data, self.pixels = data, pixels
        ids = data.studies["study_id"].to_list()
        self.row_of = {int(s): i for i, s in enumerate(ids)}
        self.images_of: dict[int, list[tuple[str, str]]] = {}
        for d, s, v in data.images.iter_rows():
            self.images_of.setdefault(int(s), []).append((d, v))

    # ----------------------------------------------------------------- the list

    def _query(self, request: Request):
        try:
            return filters.parse_query(request.query_params, self.data), None
        except filters.QueryError as exc:
            return filters.Query(), str(exc)

    def index(self, request: Request) -> Response:
        q, error = self._query(request)
        if error:
            counts = filters.facet_counts(self.data, filters.Query())
            return HTMLResponse(pages.list_page(self.data, q, None, counts, error), 400)
        page = filters.run_query(self.data, q)
        counts = filters.facet_counts(self.data, q)
        return HTMLResponse(pages.list_page(self.data, q, page, counts))

    def export(self, request: Request) -> Response:
        q, error = self._query(request)
        if error:
            return PlainTextResponse(error + "\n", 400)
        rows = filters.export_rows(self.data, q)
        return Response(
            rows.write_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="cxr-view-studies.csv"'},
        )

    # ----------------------------------------------------------------- a study

    def study(self, request: Request) -> Response:
        from cxr.mimic.reports import parse_report, read_report

        text = request.path_params["study_id"]
        i = self.row_of.get(int(text)) if text.isdigit() and len(text) < 12 else None
        if i is None:
            return PlainTextResponse("404: no such study in the manifest\n", 404)
        row = self.data.studies.row(i, named=True)
        sid = int(row["study_id"])
        note = ""
        sections: dict[str, str] = {}
        rel = self.data.report_paths.get(sid)
        if rel:
            try:
                sections = parse_report(read_report(self.data.raw_dir / rel)[0])
            except OSError:
                note = (
                    "<p class=muted>the report file is not readable; sections from the manifest</p>"
                )
        if not sections:
            sections = dict(self.data.sections.get(sid, {}))
        labeler = next(
            (n for n in ("impression", "findings", "last_paragraph") if sections.get(n)), None
        )
        params = {k: v for k, v in request.query_params.items() if k != "token"}
        back = "/" + (f"?{urlencode(params)}" if params else "")
        html = pages.study_page(
            self.data, row, self.images_of.get(sid, []), sections, labeler, back, note
        )
        return HTMLResponse(html)

    # ----------------------------------------------------------------- pixels

    def _dicom(self, request: Request) -> str | None:
        d = request.path_params["dicom_id"]
        return d if d in self.data.image_paths else None

    def image(self, request: Request) -> Response:
        d = self._dicom(request)
        kind = request.path_params["kind"]
        if d is None or kind not in ("thumb", "full"):
            return PlainTextResponse("404: no such image in the manifest\n", 404)
        try:
            if kind == "thumb":
                return Response(self.pixels.thumbnail(d), media_type="image/png")
            data, media = self.pixels.full(d)
            return Response(data, media_type=media)
        except NotAvailable as exc:
            return PlainTextResponse(f"{exc}\n", 404)

    def heatmap(self, request: Request) -> Response:
        d = self._dicom(request)
        k, j = request.path_params["eval"], request.path_params["label"]
        if d is None or not 0 <= k < len(self.data.evals):
            return PlainTextResponse("404: no such image or evaluation\n", 404)
        info = self.data.evals[k]
        if not 0 <= j < len(info.labels):
            return PlainTextResponse("404: no such label\n", 404)
        try:
            return Response(self.pixels.heatmap(info, d, info.labels[j]), media_type="image/png")
        except CxrError as exc:
            return PlainTextResponse(mask_subject(str(exc)) + "\n", 404)

    def script(self, request: Request) -> Response:
        return Response(pages.APP_JS, media_type="text/javascript; charset=utf-8")


def create_app(data: ViewData, pixels: Pixels, token: str):
    """The ASGI app: the routes behind the token gate and the guard."""
    view = ViewApp(data, pixels)
    routes = [
        Route("/", view.index),
        Route("/export.csv", view.export),
        Route("/study/{study_id}", view.study),
        Route("/image/{dicom_id}/{kind}", view.image),
        Route("/heatmap/{eval:int}/{dicom_id}/{label:int}", view.heatmap),
        Route("/app.js", view.script),
    ]
    app = Starlette(routes=routes)
    return Guard(TokenGate(app, token))


def default_heatmap_dir(data_root: Path) -> Path:
    return Path(data_root) / "interim" / "view-heatmaps"
