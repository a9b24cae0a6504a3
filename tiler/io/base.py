"""The I/O contract: a Source gives frames, a Sink takes them; each says where it runs.

In the spirit of imageio's v3 plugin API, written as docstrings on two small
base classes. The pipeline asks a source for its :meth:`Source.probe` in the
parent, has frames read into shared-memory slots by :meth:`Source.read_into`
and hands filtered frames to :meth:`Sink.write`; :meth:`Sink.commit` puts the
output in place, :meth:`Sink.abort` leaves nothing behind.

``runs`` says where the pipeline may call ``read_into`` / ``write``:

* ``"worker"``: in a worker process (the object is pickled there; stills);
* ``"thread"``: on an I/O thread of the parent (streams: video);
* ``"parent"``: in the parent's own loop, in frame order (animations).
"""

from __future__ import annotations

import abc
from typing import Any, Literal

import numpy as np

__all__ = ["Source", "Sink", "Where"]

Where = Literal["worker", "thread", "parent"]


class Source(abc.ABC):
    """Frames from one input."""

    #: Where :meth:`read_into` may run.
    runs: Where = "parent"

    @abc.abstractmethod
    def probe(self) -> Any:
        """Describe the input from its header: shape, dtype, frame count, metadata.

        Runs in the parent, before anything large is allocated; refuses what
        cannot be read with one line naming the file.
        """

    @abc.abstractmethod
    def read_into(self, index: int, out: np.ndarray) -> None:
        """Decode frame ``index`` into ``out`` (exactly the probed shape and dtype)."""


class Sink(abc.ABC):
    """Frames into one output, written under a temporary name until :meth:`commit`."""

    #: Where :meth:`write` may run.
    runs: Where = "parent"

    @abc.abstractmethod
    def write(self, index: int, frame: np.ndarray) -> None:
        """Take filtered frame ``index``; frames arrive in order."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Finish the output and put it in place atomically."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Give up: nothing is left at the output or beside it. Safe to call twice."""
