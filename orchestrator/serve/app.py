"""The Starlette application: routes, forms, errors, and the session around them.

GET pages read the workspace (``views``, ``progress``) and render a template; POSTs check the
CSRF token, then call ``actions`` (the CLI's library calls) and redirect back (303). A
ConvergeError becomes an error page with its one-line message: 400 for bad input (exit 2),
409 for "ran and said no" (exit 1), 404 for unknown names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.errors import BadInput, ConvergeError
from orchestrator.gate import audit
from orchestrator.serve import actions, diffs, progress, security, views
from orchestrator.serve.render import environment
from orchestrator.store import changesets, generations, runs
from orchestrator.store.workspace import Workspace

STATIC = Path(__file__).parent / "static"
STREAM_SECONDS = 300.0  # one event stream's life; the browser reconnects (EventSource does it by itself)


@dataclass
class Settings:
    """What the app serves and how: the workspace, the session token, the run resumer."""

    ws: Workspace
    token: str
    resumer: actions.Resumer
    stream_seconds: float = STREAM_SECONDS


def _settings(request: Request) -> Settings:
    found: Settings = request.app.state.settings
    return found


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    settings = _settings(request)
    html = request.app.state.templates.get_template(template).render(
        csrf=security.csrf_token(settings.token),
        workspace=settings.ws.root.name,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


async def _form(request: Request) -> FormData:
    """The POSTed form, once its CSRF token (and Origin, when the browser sends one) is checked."""
    origin = request.headers.get("origin")  # "null" carries no information: the CSRF token decides
    if origin not in (None, "null") and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise HTTPException(403, "cross-origin POST refused")
    form = await request.form()
    given = form.get(security.CSRF_FIELD)
    if not security.same(given if isinstance(given, str) else None, security.csrf_token(_settings(request).token)):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page and try again")
    return form


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# --- changesets ------------------------------------------------------------------------------


def changeset_list(request: Request) -> Response:
    return _page(request, "changesets.html", changesets=views.changeset_list(_settings(request).ws))


def changeset_show(request: Request) -> Response:
    page = views.changeset_page(_settings(request).ws, request.path_params["cs_id"])
    return _page(request, "changeset.html", page=page, cs=page.cs)


def changeset_verify(request: Request) -> Response:
    """A fragment for the changeset page: what does not verify now (an error is one more problem)."""
    try:
        problems = views.verify(_settings(request).ws, request.path_params["cs_id"])
    except ConvergeError as exc:
        problems = [audit.Problem("changeset", str(exc).splitlines()[0])]
    return _page(request, "verify.html", problems=problems)


def changeset_diff(request: Request) -> Response:
    ws = _settings(request).ws
    cs = changesets.load(ws, request.path_params["cs_id"])
    path = changesets.artifact_path(ws, cs.id, changesets.DIFF)
    if not path.exists():
        raise HTTPException(404, f"changeset {cs.id} has no stored diff")
    headers = {"content-security-policy": "sandbox; default-src 'none'"}
    return PlainTextResponse(path.read_text(encoding="utf-8", errors="replace"), headers=headers)


async def _decide(request: Request, decision: actions.Decision) -> Response:
    form = await _form(request)
    settings = _settings(request)
    cs = await run_in_threadpool(
        actions.decide, settings.ws, request.path_params["cs_id"], decision, _field(form, "reason"), settings.resumer
    )
    return RedirectResponse(f"/changesets/{cs.id}", status_code=303)


async def changeset_approve(request: Request) -> Response:
    return await _decide(request, "approve")


async def changeset_reject(request: Request) -> Response:
    return await _decide(request, "reject")


# --- runs ------------------------------------------------------------------------------------


def run_list(request: Request) -> Response:
    return _page(request, "runs.html", runs=progress.snapshot(_settings(request).ws))


def run_show(request: Request) -> Response:
    ws = _settings(request).ws
    record = runs.load(ws, request.path_params["run_id"])
    return _page(
        request,
        "run.html",
        run=progress.progress(ws, record),
        record=record,
        events=progress.events(ws, record.id),
        attempts=progress.attempts(ws, record.id),
    )


def run_events(request: Request) -> Response:
    settings = _settings(request)
    stream = progress.stream(settings.ws, request.is_disconnected, settings.stream_seconds)
    return StreamingResponse(stream, media_type="text/event-stream", headers={"x-accel-buffering": "no"})


# --- repos and generations -------------------------------------------------------------------


def repo_list(request: Request) -> Response:
    ws = _settings(request).ws
    rows = [(repo, generations.current(ws, repo.name)) for repo in ws.repos()]
    return _page(request, "repos.html", repos=rows)


def repo_show(request: Request) -> Response:
    return _page(request, "repo.html", line=views.timeline(_settings(request).ws, request.path_params["repo"]))


def rollback_confirm(request: Request) -> Response:
    to = request.query_params.get("to", "")
    if not to.isdigit():
        raise HTTPException(400, "rollback: give the generation to make current (?to=K)")
    plan = views.rollback_plan(_settings(request).ws, request.path_params["repo"], int(to))
    return _page(request, "rollback.html", plan=plan)


async def rollback_do(request: Request) -> Response:
    form = await _form(request)
    repo, to = request.path_params["repo"], _field(form, "to")
    if _field(form, "confirm") != "yes" or not to.isdigit():
        raise HTTPException(400, "rollback: confirm it on the confirmation page")
    await run_in_threadpool(actions.rollback, _settings(request).ws, repo, int(to))
    return RedirectResponse(f"/repos/{repo}", status_code=303)


# --- models and stats ------------------------------------------------------------------------


def models(request: Request) -> Response:
    return _page(request, "models.html", page=views.models_page(_settings(request).ws))


def stats(request: Request) -> Response:
    return _page(request, "stats.html", page=views.stats_page(_settings(request).ws))


def pygments_css(request: Request) -> Response:
    return Response(request.app.state.pygments_css, media_type="text/css")


def home(request: Request) -> Response:
    return RedirectResponse("/changesets", status_code=303)


# --- errors ----------------------------------------------------------------------------------


async def _converge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConvergeError)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    status = 404 if message.startswith("unknown ") else 400 if isinstance(exc, BadInput) else 409
    return _page(request, "error.html", status=status, status_code=status, message=message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _page(request, "error.html", status=exc.status_code, status_code=exc.status_code, message=exc.detail)


ROUTES = [
    Route("/", home),
    Route("/changesets", changeset_list),
    Route("/changesets/{cs_id}", changeset_show),
    Route("/changesets/{cs_id}/verify", changeset_verify),
    Route("/changesets/{cs_id}/diff.patch", changeset_diff),
    Route("/changesets/{cs_id}/approve", changeset_approve, methods=["POST"]),
    Route("/changesets/{cs_id}/reject", changeset_reject, methods=["POST"]),
    Route("/runs", run_list),
    Route("/runs/events", run_events),
    Route("/runs/{run_id}", run_show),
    Route("/repos", repo_list),
    Route("/repos/{repo}", repo_show),
    Route("/repos/{repo}/rollback", rollback_confirm, methods=["GET"]),
    Route("/repos/{repo}/rollback", rollback_do, methods=["POST"]),
    Route("/models", models),
    Route("/stats", stats),
    Route("/static/pygments.css", pygments_css),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


def build_app(
    ws: Workspace,
    token: str,
    port: int,
    resumer: actions.Resumer | None = None,
    stream_seconds: float = STREAM_SECONDS,
) -> Starlette:
    """The review app for ``ws``; every request must show ``token`` (see ``security``)."""
    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(security.TokenGate, token=token, cookie=security.cookie_name(port))],
        exception_handlers={ConvergeError: _converge_error, HTTPException: _http_error},
    )
    app.state.settings = Settings(ws, token, resumer or actions.Resumer(), stream_seconds)
    app.state.templates = environment()
    app.state.pygments_css = diffs.stylesheet()
    return app
