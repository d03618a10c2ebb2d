"""The browser session: the `session` cookie as a bearer token, and its CSRF defence.

A request without an Authorization header may authenticate with the cookie POST /session set
(HttpOnly: page JavaScript never sees the token). A browser sends that cookie with requests
that other sites' pages start too, so a request it authenticates that changes state (any
method but GET, HEAD, OPTIONS) must also show it comes from this site's own pages:
- `X-XSRFToken` equal to the `_xsrf` cookie (Tornado's double-submit check: a page of another
  site can neither read that cookie nor set that header on a form), and
- `Origin`, when sent, equal to this request's own scheme://host, and `Sec-Fetch-Site`, when
  sent, `same-origin` or `none`.
Bearer-token requests need none of this: a browser never adds an Authorization header by itself.
"""

from __future__ import annotations

from tornado.httputil import HTTPServerRequest
from tornado.web import HTTPError, RequestHandler

from server.domain.errors import Forbidden, Unauthorized
from server.domain.tokens import INVALID_TOKEN

SESSION_COOKIE = "session"
XSRF_COOKIE = "_xsrf"  # Tornado's name, read by its check_xsrf_cookie
XSRF_HEADER = "X-XSRFToken"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# How long the `_xsrf` cookie lasts (Tornado's own default); GET /session sets it again.
XSRF_COOKIE_DAYS = 30
CROSS_SITE = (
    "refused: this request comes from another site's page; a browser session may change "
    "data only from this site's own pages"
)
NO_XSRF = (
    f"refused: a request authenticated by the session cookie must send the {XSRF_HEADER} "
    f"header equal to the {XSRF_COOKIE} cookie"
)


def request_token(request: HTTPServerRequest) -> tuple[str, bool]:
    """The request's token and whether it came from the session cookie: an Authorization
    header always wins (even a malformed one, which is then a 401)."""
    header = request.headers.get("Authorization")
    if header is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        token = cookie.value.strip() if cookie is not None else ""
        if not token:
            raise Unauthorized(INVALID_TOKEN)
        return token, True
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(INVALID_TOKEN)
    return token.strip(), False


def own_origin(request: HTTPServerRequest) -> str:
    """scheme://host as the client used them (behind nginx: X-Forwarded-Proto and its Host)."""
    return f"{request.protocol}://{request.host}".lower()


def origin_is_own(request: HTTPServerRequest) -> bool:
    origin = request.headers.get("Origin")
    return origin is not None and origin.rstrip("/").lower() == own_origin(request)


def same_origin(request: HTTPServerRequest) -> bool:
    """Whatever the browser says of where the request comes from names this site (a client
    that says nothing, such as curl, passes: the XSRF token is then the defence)."""
    if "Origin" in request.headers and not origin_is_own(request):
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def check_csrf(handler: RequestHandler) -> None:
    """A 403, before anything changes, for a cookie request that may come from another site."""
    if handler.request.method in SAFE_METHODS:
        return
    if not same_origin(handler.request):
        raise Forbidden(CROSS_SITE)
    try:
        handler.check_xsrf_cookie()
    except HTTPError:
        raise Forbidden(NO_XSRF) from None


def is_https(handler: RequestHandler) -> bool:
    return handler.request.protocol == "https"


def set_xsrf_cookie(handler: RequestHandler) -> None:
    """The `_xsrf` cookie, readable by the page's JavaScript, which echoes it in X-XSRFToken."""
    handler.set_cookie(
        XSRF_COOKIE, handler.xsrf_token.decode("ascii"), path="/",
        expires_days=XSRF_COOKIE_DAYS, samesite="Strict", secure=is_https(handler),
    )


def set_session_cookie(handler: RequestHandler, token: str, max_age: int) -> None:
    handler.set_cookie(
        SESSION_COOKIE, token, path="/", max_age=max_age, httponly=True, samesite="Lax",
        secure=is_https(handler),
    )
    set_xsrf_cookie(handler)


def clear_session_cookie(handler: RequestHandler) -> None:
    """An expired cookie of the same name, path and attributes: the browser drops its copy."""
    handler.clear_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Lax", secure=is_https(handler)
    )
