"""Errors tileproc raises. Each message is one line that names the file and the reason."""

from __future__ import annotations

__all__ = [
    "TileprocError",
    "InputError",
    "OutputError",
    "OutputExists",
    "WorkerError",
    "FilterFailed",
    "WorkerDied",
    "TileTimeout",
    "VideoError",
    "TileprocWarning",
]


class TileprocError(Exception):
    """Base of every error tileproc raises on purpose."""


class InputError(TileprocError):
    """An input cannot be read: missing, corrupt, truncated, unsupported or too large."""


class OutputError(TileprocError):
    """An output cannot be written where asked (it is an input, a folder, unwritable...)."""


class OutputExists(OutputError):
    """The output exists and overwriting was not asked for."""


class WorkerError(TileprocError):
    """Work on a tile failed in a worker process."""


class FilterFailed(WorkerError):
    """A filter raised or returned something invalid; carries the worker's traceback."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback


class WorkerDied(WorkerError):
    """A worker process died (killed, crashed, out of memory) while holding a tile."""


class TileTimeout(WorkerError):
    """A tile took longer than the per-tile timeout."""


class VideoError(TileprocError):
    """ffmpeg failed; the message ends with the last lines it printed."""


class TileprocWarning(UserWarning):
    """Something the user should know that did not stop the run (one line; the CLI prints it as one)."""
