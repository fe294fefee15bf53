"""Errors that lcpaq reports to a user as one clear line (the CLI exits with code 2)."""
from __future__ import annotations

import logging


class LcpaqError(Exception):
    """Base of every error meant for a user: its message is a complete, one-line sentence."""


class CaptureError(LcpaqError):
    """A model could not be captured as a graph; the message names the op and the source line."""


class ConfigError(LcpaqError):
    """A bad option: unknown model, target, pass or bit-width, malformed spec or budget."""


class PassContractError(LcpaqError):
    """A pass ran without the annotations it reads, or broke a guarantee it declares."""


class CorruptFileError(LcpaqError):
    """A cache, table or data file on disk could not be read; the message names its path."""


class LoweringError(LcpaqError):
    """A graph a backend cannot lower or build; the message names the node and its op."""


class OutputError(LcpaqError):
    """An output location (``--out``, ``-o``) cannot be written; the message names the path."""


#: lcpaq's logger. At DEBUG (``lcpaq ... --debug``) tracebacks and TVM's native logs are shown.
LOGGER = logging.getLogger("lcpaq")


def debugging() -> bool:
    """Whether lcpaq runs in debug mode (``--debug``, or its logger set to DEBUG)."""
    return LOGGER.isEnabledFor(logging.DEBUG)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of any exception in one line: a multi-line message (TVM's carry their
    C++ traceback) is reduced to its first line, or to its last where it opens with a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text and not text.startswith(f"{name}:") else (text or name)
