"""One base for every operator error of ``mlops``: a readable one-line message and an exit code.

The CLI catches :class:`MlopsError` and prints its message as is (passwords redacted); anything
else is a bug and is shown with its type. The kinds say what went wrong, so that callers branch
on a type, never on the wording of a message:

- :class:`NotFound`: the thing named does not exist (a model, a version, an archive);
- :class:`Unreachable`: the store, server or database could not be asked (network, 5xx, driver);
- :class:`Refused`: it exists and answered, but what was asked cannot be done (damaged archive,
  wrong schema revision, a port already taken, ...).

Domain classes (``RegistryError``, ``ArchiveError``, ``StackError`` ...) derive from the base and,
where they always mean one kind, from that kind too.
"""

from __future__ import annotations


class MlopsError(Exception):
    """An operation that cannot proceed; ``str(exc)`` is one readable line for the operator."""

    exit_code: int = 1
    kind: str = "error"


class NotFound(MlopsError):
    """What was named does not exist."""

    kind = "not-found"


class Unreachable(MlopsError):
    """The store, server or database could not be asked."""

    kind = "unreachable"


class Refused(MlopsError):
    """The request was understood but cannot be carried out as asked."""

    kind = "refused"


__all__ = ["MlopsError", "NotFound", "Refused", "Unreachable"]
