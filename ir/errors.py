"""Errors that lcpaq reports to a user as one clear line (the CLI exits with code 2)."""
from __future__ import annotations


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
