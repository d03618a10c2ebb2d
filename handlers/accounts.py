"""Accounts and bearer tokens."""

from __future__ import annotations

from server.domain import validation

from .base import APIHandler


class UsersHandler(APIHandler):
    requires_auth = False

    async def post(self) -> None:
        """Register a new user."""
        fields = validation.parse_json_object(self.body, self.request.headers.get("Content-Type"))
        creds = validation.credentials(fields, new_account=True)
        user = await self.services.users.create(username=creds.username, password=creds.password)
        self.set_status(201)
        self.write(user)


class TokensHandler(APIHandler):
    requires_auth = False

    async def post(self) -> None:
        """Exchange a username and password for a bearer token."""
        fields = validation.parse_json_object(self.body, self.request.headers.get("Content-Type"))
        creds = validation.credentials(fields, new_account=False)
        user_id = await self.services.users.authenticate(
            username=creds.username, password=creds.password
        )
        token, expires_at = self.services.tokens.issue(user_id)
        self.set_status(201)
        self.write({"token": token, "expires_at": expires_at.isoformat().replace("+00:00", "Z")})


class CurrentTokenHandler(APIHandler):
    async def delete(self) -> None:
        """Log out: the token stops working at once, on every instance."""
        await self.services.tokens.revoke(self.principal)
        # Notification sockets opened with this token close too (on every instance).
        await self.services.events.revoked(self.principal)
        self.set_status(204)


default_handlers = [
    (r"/users", UsersHandler),
    (r"/tokens", TokensHandler),
    (r"/tokens/current", CurrentTokenHandler),
]
