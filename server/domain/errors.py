"""Domain errors. Each carries the HTTP status that the API base handler answers with."""

from pymongo.errors import ConnectionFailure, PyMongoError

DATABASE_UNAVAILABLE = "database unavailable, try again shortly"


def database_unavailable(exc: BaseException | None) -> bool:
    """MongoDB could not be reached or did not answer in time: a 503, not a 500."""
    return isinstance(exc, ConnectionFailure) or (
        isinstance(exc, PyMongoError) and exc.timeout
    )


class ApiError(Exception):
    status = 500
    # Seconds after which the client may try again (sent as Retry-After), when it is known.
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Gone(ApiError):
    status = 410


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class UnprocessableContent(ApiError):
    """Well-formed, but contradicting an earlier request: an Idempotency-Key reused."""

    status = 422


class TooManyRequests(ApiError):
    status = 429


class ServiceUnavailable(ApiError):
    status = 503
