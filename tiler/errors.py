"""Errors tileproc raises, and where the engine builds them.

Each message is one line that names the file and the reason. The engine's
errors about work in worker processes (a filter that raised, a worker that
died, a tile past its time) are all made by the functions at the end of this
module, so their wording lives in one place.
"""

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
    "RemoteTraceback",
    "filter_failed",
    "step_failed",
    "worker_died",
    "tile_timed_out",
    "exit_text",
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


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text.

    It is the ``__cause__`` of the :class:`FilterFailed` raised here, so a
    default traceback print shows where the filter failed in the worker.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class FilterFailed(WorkerError):
    """A filter raised or returned something invalid; carries the worker's traceback.

    The traceback is the text ``remote_traceback`` and, as a :class:`RemoteTraceback`,
    this exception's ``__cause__``.
    """

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback
        if remote_traceback:
            self.__cause__ = RemoteTraceback(remote_traceback)

    def __reduce__(self):
        return (type(self), (str(self), self.remote_traceback))


class WorkerDied(WorkerError):
    """A worker process died (killed, crashed, out of memory) while holding a tile."""


class TileTimeout(WorkerError):
    """A tile took longer than the per-tile timeout."""


class VideoError(TileprocError):
    """ffmpeg failed; the message ends with the last lines it printed."""


# -- the engine's errors, built in one place ------------------------------------


def filter_failed(where: str, name: str | None, kind: str, message: str, tb: str) -> FilterFailed:
    """A filter of the chain failed at ``where`` (``kind``: "error", "invalid" or "load")."""
    if kind == "load":
        return FilterFailed(f"{where}: a worker could not load the filter chain: {message}", tb)
    who = f"filter {name!r}" if name else "worker"
    verb = "returned an invalid result" if kind == "invalid" else "raised"
    return FilterFailed(f"{where}: {who} {verb}: {message}", tb)


def step_failed(label: str, error_class: str, text: str, message: str) -> TileprocError:
    """A file step (decoding, encoding) raised in a worker: tileproc's own errors, which
    name the file already, are rebuilt as they were; anything else is prefixed with ``label``."""
    cls = globals().get(error_class) if error_class in __all__ else None
    if isinstance(cls, type) and issubclass(cls, TileprocError) and cls is not FilterFailed:
        return cls(text)
    return TileprocError(f"{label}: {message}")


def worker_died(where: str, exitcode: int | None, times: int = 1) -> WorkerDied:
    """The worker holding the work at ``where`` died ``times`` times."""
    return WorkerDied(
        f"{where}: worker process died ({exit_text(exitcode)})" + (f" {times} times" if times > 1 else "")
    )


def tile_timed_out(where: str, seconds: float) -> TileTimeout:
    """The work at ``where`` gave no result within the tile timeout; its worker was stopped."""
    return TileTimeout(f"{where}: no result after {seconds:g} s (tile timeout); worker stopped")


def exit_text(code: int | None) -> str:
    """How a process ended, in words (``killed by SIGSEGV``, ``exit code 3``)."""
    if code is None:
        return "unknown exit"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        if name == "SIGBUS":
            return "killed by SIGBUS: shared memory ran out; is /dev/shm full?"
        return f"killed by {name}"
    return f"exit code {code}"


class TileprocWarning(UserWarning):
    """Something the user should know that did not stop the run (one line; the CLI prints it as one)."""
