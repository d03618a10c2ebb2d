"""Accounts, bearer tokens and browser sessions (a token in an HttpOnly cookie)."""

from __future__ import annotations

from datetime import UTC, datetime

from server.domain import validation
from server.domain.errors import Forbidden, Unauthorized
from server.domain.tokens import INVALID_TOKEN

from . import cookies
from .base import APIHandler


def iso_z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class UsersHandler(APIHandler):
    requires_auth = False

    async def post(self) -> None:
        """Register a new user."""
        fields = validation.parse_json_object(self.body, self.request.headers.get("Content-Type"))
        creds = validation.credentials(fields, new_account=True)
        user = await self.services.users.create(username=creds.username, password=creds.password)
        self.set_status(201)
        self.write(user)


class LoginHandler(APIHandler):
    """What POST /tokens and POST /session share: the same checks, refusals and throttle."""

    requires_auth = False

    async def log_in(self) -> tuple[str, str, datetime]:
        """The username, a fresh token and its expiry, for the credentials in the body."""
        fields = validation.parse_json_object(self.body, self.request.headers.get("Content-Type"))
        creds = validation.credentials(fields, new_account=False)
        logins = self.services.logins
        await logins.check(creds.username)
        try:
            user_id = await self.services.users.authenticate(
                username=creds.username, password=creds.password
            )
        except Unauthorized:
            await logins.failed(creds.username)
            raise
        token, expires_at = self.services.tokens.issue(user_id)
        return creds.username, token, expires_at


class TokensHandler(LoginHandler):
    async def post(self) -> None:
        """Exchange a username and password for a bearer token."""
        _username, token, expires_at = await self.log_in()
        self.set_status(201)
        self.write({"token": token, "expires_at": iso_z(expires_at)})


class CurrentTokenHandler(APIHandler):
    async def delete(self) -> None:
        """Log out: the token stops working at once, on every instance."""
        await self.log_out()
        self.set_status(204)

    async def log_out(self) -> None:
        await self.services.tokens.revoke(self.principal)
        # Notification sockets opened with this token close too (on every instance).
        await self.services.events.revoked(self.principal)


class SessionHandler(LoginHandler, CurrentTokenHandler):
    """The browser's session: a bearer token the page's JavaScript never sees."""

    requires_auth = True
    public_methods = ("POST",)  # logging in needs no session; reading or ending one does

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # Who is logged in is private: no cache (nor the back button) keeps these replies.
        self.set_header("Cache-Control", "no-store")

    async def check_request(self) -> None:
        self.requires_auth = self.request.method not in self.public_methods
        if self.request.method == "GET":
            # Even on a 401: a freshly loaded page reads it before it logs in.
            cookies.set_xsrf_cookie(self)
        await super().check_request()

    async def post(self) -> None:
        """Log in: the token goes in an HttpOnly cookie, never in the body."""
        if not cookies.same_origin(self.request):
            raise Forbidden(cookies.CROSS_SITE)  # no other site logs a browser in
        username, token, expires_at = await self.log_in()
        cookies.set_session_cookie(self, token, self.services.tokens.ttl)
        self.set_status(201)
        self.write({"username": username, "expires_at": iso_z(expires_at)})

    async def get(self) -> None:
        """Who the session belongs to, and until when it lasts."""
        username = await self.services.users.username_of(self.user_id)
        if username is None:
            raise Unauthorized(INVALID_TOKEN)
        expires_at = datetime.fromtimestamp(self.principal.expires_at, UTC)
        self.write({"username": username, "user_id": str(self.user_id),
                    "expires_at": iso_z(expires_at)})

    async def delete(self) -> None:
        """Log out: as DELETE /tokens/current, and the browser drops the cookie."""
        await self.log_out()
        cookies.clear_session_cookie(self)
        self.set_status(204)


default_handlers = [
    (r"/users", UsersHandler),
    (r"/tokens", TokensHandler),
    (r"/tokens/current", CurrentTokenHandler),
    (r"/session", SessionHandler),
]
