"""One error base for everything the service answers itself (MLServer's pattern).

A :class:`ServingError` carries an error code, a one-line message and the HTTP status it is
answered with; ``serving.handlers`` turns any of them into ``{"error_code", "message"}``.
"""

from __future__ import annotations


class ServingError(Exception):
    """An answer the service gives on purpose: ``code`` and ``message`` in the body, ``status``."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class InputError(ServingError):
    """A client mistake: becomes an HTTP 4xx with ``{"error_code", "message"}``."""


class BodyError(InputError):
    """The request body could not be read to its end (answered; the worker then closes the connection)."""
