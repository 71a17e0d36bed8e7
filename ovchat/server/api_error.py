"""The error every route answers with: OpenAI's shape, or the shape of the dialect its path belongs to."""

from __future__ import annotations

# Anthropic names an error by its kind, not by a code: these are its kinds for our statuses.
_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def dialect_of(path: str) -> str:
    """Which API a path belongs to: "ollama" (/api/...), "anthropic" (/v1/messages...) or "openai"."""
    if path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


class ApiError(Exception):
    """An error answered in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, or in another
    dialect's (`body(dialect)`)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self, dialect: str = "openai") -> dict:
        if dialect == "ollama":
            return {"error": self.message}
        if dialect == "anthropic":
            kind = _ANTHROPIC_KINDS.get(self.status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
