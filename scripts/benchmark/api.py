"""The service's HTTP API as the benchmark needs it: one keep-alive connection through nginx."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from scripts.stack.config import StackError


class Api:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1",
                                                     parts.port or 80, timeout=timeout)

    def request(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the next request reconnects
            raise

    def get(self, path: str, token: str | None = None) -> bytes:
        """The body of a 200 (exactly as sent: no Accept-Encoding, so never compressed)."""
        status, body = self.request("GET", path, token=token)
        if status != 200:
            raise StackError(f"GET {path} answered {status}: {body[:200]!r}")
        return body

    def token(self, username: str, password: str) -> str:
        """A bearer token for `username`, registering it first when it is new."""
        credentials = {"username": username, "password": password}
        status, body = self.request("POST", "/tokens", body=credentials)
        if status == 401:
            status, body = self.request("POST", "/users", body=credentials)
            if status != 201:
                raise StackError(f"POST /users answered {status}: {body[:200]!r}")
            status, body = self.request("POST", "/tokens", body=credentials)
        if status != 201:
            raise StackError(f"POST /tokens answered {status}: {body[:200]!r}")
        return str(json.loads(body)["token"])

    def close(self) -> None:
        self.connection.close()
