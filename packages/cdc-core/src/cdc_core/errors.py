"""Exception types shared by every part; what the engine does with each is documented here."""

from __future__ import annotations

__all__ = [
    "CdcError",
    "ConfigError",
    "CorruptCommitLogError",
    "PermanentError",
    "PluginError",
    "TransientError",
]


class CdcError(Exception):
    """Base of the project's own errors."""


class ConfigError(CdcError):
    """Bad configuration; the message names the key path (and file:line where known)."""


class PluginError(CdcError):
    """A plugin failed to load or two plugins claim one name; the message names the distributions."""


class TransientError(CdcError):
    """Worth retrying: connection lost, timeout, overload. The engine backs off and retries."""


class PermanentError(CdcError):
    """Retrying will not help (type mismatch, constraint). The engine sends the events to the DLQ."""


class CorruptCommitLogError(CdcError):
    """A commitlog section failed its CRC or cannot be parsed; names the segment file and offset."""

    def __init__(self, message: str, *, path: str, offset: int) -> None:
        super().__init__(f"{path} at offset {offset}: {message}")
        self.path = path
        self.offset = offset
