"""Frame buffers in shared memory, and the bounded ring of them.

The parent creates every segment and unlinks it (promise 4: one owner);
workers only attach by name and close. A segment holds one frame slot: the
input frame, then the output frame. Segment names carry the parent's pid, so a
later run can sweep segments a killed run left behind.

Only :class:`SlotRef` (a name, a shape, a dtype, two offsets) ever crosses a
process boundary; the pixels stay here.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from tiler.errors import TileprocError
from tiler.io.files import pid_alive

__all__ = ["SlotRef", "FrameSlot", "FrameRing", "attach_views", "sweep_stale_segments", "SHM_DIR"]

SHM_DIR = "/dev/shm"
PREFIX = "tileproc_"
_NAME = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+$")
_ALIGN = 4096


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class SlotRef:
    """Where a frame lives: what a worker needs to view a slot's input and output."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    in_offset: int
    out_offset: int
    out_shape: tuple[int, ...] | None = None  # when a filter changes the frame's size


def attach_views(buf: memoryview, ref: SlotRef, *, writable_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) numpy views of a slot over a mapped buffer; the input is read-only
    unless ``writable_input`` (for the step that decodes into it)."""
    dtype = np.dtype(ref.dtype)
    out_shape = ref.shape if ref.out_shape is None else ref.out_shape
    src = np.frombuffer(buf, dtype, int(np.prod(ref.shape)), ref.in_offset).reshape(ref.shape)
    dst = np.frombuffer(buf, dtype, int(np.prod(out_shape)), ref.out_offset).reshape(out_shape)
    src.flags.writeable = writable_input
    return src, dst


class FrameSlot:
    """One shared segment with room for an input and an output frame of ``capacity`` bytes each."""

    def __init__(self, capacity: int):
        self.capacity = _aligned(max(capacity, 1))
        _check_space(2 * self.capacity)
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        try:
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=2 * self.capacity)
        except OSError as exc:
            raise TileprocError(
                f"shared memory: cannot create a {2 * self.capacity / 2**20:.1f} MiB segment "
                f"in {SHM_DIR} ({exc.strerror or exc})"
            ) from None
        self.name = self.shm.name.lstrip("/")
        self.ref: SlotRef | None = None

    def bind(
        self, shape: tuple[int, ...], dtype: np.dtype, out_shape: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lay a frame of ``shape`` and ``dtype`` into the slot; return (input, output) views.
        The output has ``out_shape`` when given (a chain that changes the frame's size)."""
        dtype = np.dtype(dtype)
        if max(int(np.prod(shape)), int(np.prod(out_shape or shape))) * dtype.itemsize > self.capacity:
            raise ValueError("frame does not fit this slot")
        out = None if out_shape is None or tuple(out_shape) == tuple(shape) else tuple(int(s) for s in out_shape)
        self.ref = SlotRef(self.name, tuple(int(s) for s in shape), dtype.str, 0, self.capacity, out)
        return attach_views(self.shm.buf, self.ref, writable_input=True)

    def close(self) -> None:
        """Unmap and unlink (idempotent). Views handed out must be dropped first."""
        shm, self.shm = self.shm, None
        if shm is None:
            return
        try:
            shm.close()
        except BufferError:
            # Arrays still view the mapping: it is unmapped when the last one goes.
            # Drop our handles so that SharedMemory.__del__ does not try again.
            shm._buf = shm._mmap = None
            with contextlib.suppress(OSError):
                os.close(shm._fd)
            shm._fd = -1
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()


class FrameRing:
    """At most ``size`` slots, reused across frames; grown only for larger frames.

    Memory is a function of the frame size and ``size``, never of the input's length.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"frames in flight must be >= 1, got {size}")
        self.size = size
        self._free: list[FrameSlot] = []
        self._busy: set[FrameSlot] = set()
        self.retired: list[str] = []  # names workers should forget

    @property
    def available(self) -> bool:
        return len(self._busy) < self.size

    @property
    def in_use(self) -> int:
        """Slots holding a frame now."""
        return len(self._busy)

    def acquire(self, nbytes: int) -> FrameSlot:
        """A free slot of at least ``nbytes`` per frame (caller checks :attr:`available`)."""
        if not self.available:
            raise RuntimeError("no free frame slot")
        fitting = [s for s in self._free if s.capacity >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: s.capacity)
            self._free.remove(slot)
        else:
            if self._free and len(self._free) + len(self._busy) >= self.size:
                old = self._free.pop(0)
                self.retired.append(old.name)
                old.close()
            slot = FrameSlot(nbytes)
        self._busy.add(slot)
        return slot

    def discard(self, slot: FrameSlot) -> None:
        """Free a busy slot for good (unlink it) instead of reusing it."""
        self._busy.discard(slot)
        self.retired.append(slot.name)
        slot.close()

    def release(self, slot: FrameSlot) -> None:
        self._busy.discard(slot)
        slot.ref = None
        self._free.append(slot)

    def __iter__(self) -> Iterator[FrameSlot]:
        yield from self._free
        yield from self._busy

    def close(self) -> None:
        for slot in list(self):
            slot.close()
        self._free.clear()
        self._busy.clear()


def _check_space(nbytes: int) -> None:
    """Refuse, with the numbers and a fix, a segment that could not be created or would
    SIGBUS the workers later: /dev/shm too small, or a file size limit (ulimit -f) below it."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and nbytes > limit:
        raise TileprocError(
            f"shared memory: need a {nbytes / 2**20:.1f} MiB segment but the file size limit "
            f"(ulimit -f) is {limit / 2**20:.1f} MiB; raise the limit or use smaller frames"
        )
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise TileprocError(
            f"shared memory: need {nbytes / 2**20:.0f} MiB in {SHM_DIR}, {free / 2**20:.0f} MiB free; "
            "use smaller frames or fewer frames in flight, or give the container more "
            "(docker run --shm-size=2g)"
        )


def sweep_stale_segments() -> list[str]:
    """Unlink segments left in /dev/shm by tileproc processes that no longer exist."""
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if m and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
    return removed
