"""Domain errors raised by the storage modules; the HTTP layer maps each to a status code.

Keeping them free of any web framework lets the round protocol drive the modules in-process.
"""

__all__ = ["CoordinatorError", "NotFound", "Conflict", "Invalid", "Forbidden"]


class CoordinatorError(Exception):
    """Base class: `code` is the short machine-readable name used in JSON errors."""

    code = "error"


class NotFound(CoordinatorError):
    code = "not_found"


class Conflict(CoordinatorError):
    code = "conflict"


class Invalid(CoordinatorError):
    code = "invalid_request"


class Forbidden(CoordinatorError):
    code = "forbidden"
