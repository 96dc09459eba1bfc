"""The exceptions the library raises on purpose.

Every consumer (CLI, HTTP service, MLflow model) maps these to its own way of saying no; anything
else escaping the library is a bug.
"""

from __future__ import annotations

import errno
import sys

# How a command (the CLI, a scheduler's pipeline) stopped by one of these errors exits
BAD_INPUT = 2  # bad data, model or URI: a retry would fail the same way
TRY_LATER = 75  # EX_TEMPFAIL: the registry or the network failing, a promotion holding its
# lock, a full disk: worth running again later


def exit_code(exc: BaseException) -> int:
    """:data:`TRY_LATER` for an error that may pass if the command runs again later, else
    :data:`BAD_INPUT`."""
    if isinstance(exc, BrokenPipeError):  # the reader left (`| head`): no server to wait for
        return BAD_INPUT
    if isinstance(exc, RegistryUnavailable | PromotionLocked | ConnectionError | TimeoutError):
        return TRY_LATER
    requests = sys.modules.get("requests")  # MLflow's HTTP client raises its own kinds
    if requests is not None and isinstance(exc, requests.ConnectionError | requests.Timeout):
        return TRY_LATER
    return TRY_LATER if isinstance(exc, OSError) and exc.errno == errno.ENOSPC else BAD_INPUT


def one_line(exc: BaseException) -> str:
    """The error as one line for a user: an OSError as its path and the system's reason
    (``out/m: Permission denied``), any other as its message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else f"{exc.filename}"
        return f"{paths}: {exc.strerror}"
    return str(exc) or getattr(exc, "strerror", None) or type(exc).__name__


class AnomalyError(Exception):
    """Base class of the library's own errors."""


class InputError(AnomalyError, ValueError):
    """Data that cannot be used as given: a missing column, a bad value, an empty file.

    Parameters
    ----------
    message : str
        What is wrong, in words a user can act on.
    column : str, optional
        The offending column, when one is to blame.
    row : int, optional
        0-based position of the first offending data row (the header is not a row).
    """

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.column = column
        self.row = row


class NotFittedError(AnomalyError):
    """A detector was asked to score before it was fitted."""


class ModelFormatError(AnomalyError):
    """A model directory is missing, incomplete, or written by an incompatible version."""


class RegistryError(AnomalyError):
    """A model URI that does not resolve: unknown model or alias, or an unreachable server."""


class RegistryUnavailable(RegistryError):
    """The MLflow server could not be reached, or answered with an error of its own (5xx):
    not the request's fault, and worth retrying later."""


class PromotionLocked(RegistryError):
    """Another promotion of the same registered model held its lock for longer than we waited."""
