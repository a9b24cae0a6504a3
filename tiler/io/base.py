"""The I/O contract: every input is a :class:`Source`, every output a :class:`Sink`.

The pipeline runs one loop, ``source -> engine -> sink``::

    info = source.probe()                    # small, frozen, picklable; nothing decoded
    for index in range(n):
        source.read_into(index, slot)        # pixels straight into a shared-memory slot
        ...                                  # the engine filters the slot's tiles
        sink.write(index, filtered)          # in index order
    sink.commit()                            # the output appears whole, atomically
    # on any failure: sink.abort()           # nothing is left, no process, no temporary

Each object says where its ``read_into`` / ``write`` run (``runs``, a class
default an instance may narrow): ``"worker"`` (a pool process: the object must
pickle, as a still image's decode does), ``"thread"`` (an I/O thread of the
parent: a video's ffmpeg pipes) or ``"parent"`` (the caller's loop, in frame
order: an animation's frames). A format is a module that implements these
few methods on its library (Pillow, tifffile, PyAV/ffmpeg), in the spirit of
imageio's v3 plugin API.
"""

from __future__ import annotations

import abc
from typing import Any, Literal

import numpy as np

__all__ = ["Sink", "Source", "Where"]

Where = Literal["worker", "thread", "parent"]


class Source(abc.ABC):
    """Frames from a file: what they are (:meth:`probe`), then each one into a caller's buffer."""

    #: Where this object's frame calls run.
    runs: Where = "parent"

    @abc.abstractmethod
    def probe(self) -> Any:
        """What the frames are (shape, dtype, count, timing, metadata), without decoding them all."""

    @abc.abstractmethod
    def read_into(self, index: int, out: np.ndarray) -> bool | None:
        """Decode frame ``index`` into ``out`` (its shape and dtype, C-contiguous).

        Returns False, leaving ``out`` alone, when the source has no frame ``index``
        (its end; a source that knows its length may return None). A sequential
        source (video) takes indices in order.
        """

    def close(self) -> None:  # noqa: B027 - optional: most sources hold nothing
        """Release what the source holds (files, processes). Idempotent."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sink(abc.ABC):
    """An output file built frame by frame; it appears only when :meth:`commit` succeeds."""

    #: Where this object's frame calls run.
    runs: Where = "parent"

    @abc.abstractmethod
    def write(self, index: int, frame: np.ndarray) -> None:
        """Add frame ``index`` (in index order from 0)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Finish the file and move it into place; raises if that fails (then nothing is left)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written so far. Idempotent; safe from another thread."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
