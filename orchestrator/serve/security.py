"""Who may use the page: the session token, its cookie, CSRF tokens, and where the server may listen.

Like Jupyter: a random token in the URL printed at start (:class:`TokenGate`). Forms carry a CSRF
token derived from the session token; POSTs without it are refused 403.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import UsageError

TOKEN_PARAM = "token"
CSRF_FIELD = "csrf"
LOOPBACK_NAMES = ("localhost",)

# No inline script or style, nothing from elsewhere: an injected tag would have nothing to run.
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # with no-referrer, browsers send `Origin: null` on our own forms
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

UNAUTHORIZED = (
    "<!doctype html><title>401 token required</title>"
    "<h1>401: token required</h1><p>Open the URL <code>converge serve</code> printed (it carries ?token=...).</p>"
)


def new_token() -> str:
    """A random session token (192 bits)."""
    return secrets.token_urlsafe(24)


def csrf_token(token: str) -> str:
    """The CSRF token forms carry: bound to the session token, useless without the session."""
    return hmac.new(token.encode(), b"converge-csrf", hashlib.sha256).hexdigest()


def same(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented secret."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback ``host`` without ``allow_remote``; with it, the warning to print."""
    if is_loopback(host):
        return None
    risk = (
        "anyone who can reach it and learns the token (sent in plain HTTP) can approve changesets "
        "and roll back generations with your key"
    )
    if not allow_remote:
        raise UsageError(f"--host {host}: not a loopback address; {risk}; pass --allow-remote to bind it anyway")
    return f"warning: serving on {host}, not loopback: {risk}"


def cookie_name(port: int) -> str:
    """Cookies ignore ports: servers on different ports of one host keep separate sessions."""
    return f"converge-session-{port}"


class TokenGate:
    """ASGI middleware: every HTTP request shows the token (query, cookie or bearer header) or gets 401.

    The first request carrying the token gets an HttpOnly, SameSite=Strict cookie and is redirected
    to the same URL without it (so the token leaves the address bar and history); every later
    request shows the cookie, or an ``Authorization: Bearer`` header. Anything else is answered 401,
    static files included.
    """

    def __init__(self, app: ASGIApp, token: str, cookie: str) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if same(query.get(TOKEN_PARAM), self.token):
            await self._welcome(scope, query)(scope, receive, send)
            return
        if self._presented(scope):
            await self.app(scope, receive, self._with_headers(send))
            return
        await _secured(HTMLResponse(UNAUTHORIZED, status_code=401))(scope, receive, send)

    def _presented(self, scope: Scope) -> bool:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer ") and same(auth.removeprefix("Bearer "), self.token):
            return True
        jar: SimpleCookie = SimpleCookie()
        jar.load(headers.get("cookie", ""))
        morsel = jar.get(self.cookie)
        return morsel is not None and same(morsel.value, self.token)

    def _welcome(self, scope: Scope, query: dict[str, str]) -> Response:
        """Set the session cookie and send the browser to the same URL without the token."""
        rest = {k: v for k, v in query.items() if k != TOKEN_PARAM}
        path = "/" + str(scope.get("path") or "").lstrip("/")  # never "//host": no redirect off this server
        target = path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return _secured(response)

    def _with_headers(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return sending


def _secured(response: Response) -> Response:
    for key, value in HEADERS.items():
        response.headers[key] = value
    return response
