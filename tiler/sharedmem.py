"""Frame buffers in shared memory, and the bounded ring of them.

The parent creates every segment and unlinks it (promise 4: one owner);
workers only attach by path and close. A segment holds one frame slot: the
input frame, then the output frame.

A segment is a file in /dev/shm (or, where /dev/shm cannot hold even one frame,
in a temporary folder on disk), mapped with :mod:`mmap`. Its pages are
reserved when it is made (``posix_fallocate``), so a full /dev/shm is an error
now, never a SIGBUS in a worker later. Its name says whose it is (host, boot,
pid namespace, pid and start time: :class:`tiler.platform.Owner`), so a later
run sweeps only what a dead process of this machine and namespace left.

``multiprocessing.shared_memory`` is not used: it registers every segment
(and, before Python 3.13, every attach) with a resource-tracker process that
warns about and unlinks segments on its own schedule, it cannot reserve pages,
and it cannot put a slot in a file on disk.

Only :class:`SlotRef` (a path, a shape, a dtype, two offsets) ever crosses a
process boundary; the pixels stay here.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import re
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tiler import platform
from tiler.errors import TileprocError, TileprocWarning

__all__ = [
    "SlotRef",
    "FrameSlot",
    "PrivateSlot",
    "FrameRing",
    "attach",
    "attach_views",
    "sweep_stale_segments",
    "owned_entries",
    "segment_owner",
    "SHM_DIR",
    "PREFIX",
]

SHM_DIR = platform.SHM_DIR
PREFIX = "tileproc_"
# tileproc_HOST-PID-START_RANDOM: a segment in /dev/shm, or a spill folder on disk
_NAME = re.compile(rf"^{PREFIX}({platform.OWNER_PATTERN})_[0-9a-f]+$")
_ALIGN = 4096
_MiB = 2**20


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _mib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / _MiB:.1f} MiB" if n < 10 * _MiB else f"{n / _MiB:.0f} MiB"


def segment_owner(name: str) -> platform.Owner | None:
    """The owner a segment or spill-folder name records; None for names tileproc did not make."""
    m = _NAME.match(os.path.basename(name))
    return platform.Owner.parse(m.group(1)) if m else None


def _new_name() -> str:
    return f"{PREFIX}{platform.me().token}_{secrets.token_hex(6)}"


@dataclass(frozen=True)
class SlotRef:
    """Where a frame lives: what a worker needs to view a slot's input and output."""

    name: str  # the segment's path
    shape: tuple[int, ...]
    dtype: str
    in_offset: int
    out_offset: int
    out_shape: tuple[int, ...] | None = None  # when a filter changes the frame's size


def attach(path: str) -> mmap.mmap:
    """Map an existing segment (a worker's side). ``close()`` it when done; views first."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def attach_views(buf, ref: SlotRef, *, writable_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) numpy views of a slot over a mapped buffer; the input is read-only
    unless ``writable_input`` (for the step that decodes into it)."""
    dtype = np.dtype(ref.dtype)
    out_shape = ref.shape if ref.out_shape is None else ref.out_shape
    src = np.frombuffer(buf, dtype, int(np.prod(ref.shape)), ref.in_offset).reshape(ref.shape)
    dst = np.frombuffer(buf, dtype, int(np.prod(out_shape)), ref.out_offset).reshape(out_shape)
    src.flags.writeable = writable_input
    return src, dst


class NoRoom(OSError):
    """The folder cannot hold the segment (full, or a limit below its size)."""


class FrameSlot:
    """One segment in ``folder`` with room for an input and an output frame of ``capacity`` bytes each.

    Raises :class:`NoRoom` when the folder cannot hold it; its pages are
    reserved before this returns.
    """

    def __init__(self, capacity: int, folder: str = SHM_DIR):
        self.capacity = _aligned(max(capacity, 1))
        size = 2 * self.capacity
        self.name = os.path.join(folder, _new_name())
        self.on_disk = folder != SHM_DIR
        fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            platform.reserve(fd, size)
            self.mapping: mmap.mmap | None = mmap.mmap(fd, size)
        except OSError as exc:
            os.unlink(self.name)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise NoRoom(exc.errno, exc.strerror) from None
            raise
        finally:
            os.close(fd)
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
        return attach_views(self.mapping, self.ref, writable_input=True)

    def close(self) -> None:
        """Unmap and unlink (idempotent). Arrays still viewing the slot keep its pages
        mapped until they go; the name is gone at once."""
        if self.mapping is None:
            return
        with contextlib.suppress(FileNotFoundError):  # the name first: safe to repeat if interrupted here
            os.unlink(self.name)
        mapping, self.mapping = self.mapping, None
        with contextlib.suppress(BufferError):
            mapping.close()


class PrivateSlot(FrameSlot):
    """A slot in this process's own memory, for a frame no worker will see (one image
    decoded, filtered and encoded here): no /dev/shm space to reserve, map and unmap,
    which at 12 MP costs about as much as decoding the frame's JPEG."""

    def __init__(self, capacity: int):  # noqa: D107 - no segment: nothing of FrameSlot's to run
        self.capacity = _aligned(max(capacity, 1))
        self.name = ""
        self.on_disk = False
        self.mapping = np.empty(2 * self.capacity, np.uint8)  # type: ignore[assignment]  # a buffer, like the mmap
        self.ref = None

    def close(self) -> None:
        self.mapping = None


class FrameRing:
    """At most ``size`` slots, reused across frames; grown only for larger frames.

    Memory is a function of the frame size and ``size``, never of the input's
    length. Every slot is reserved when it is made. When a larger frame needs
    new slots, the ring plans for all of them at once: where /dev/shm cannot
    hold ``size`` of them it runs with as many frames in flight as it can hold;
    where it cannot hold one, the slots are files in a temporary folder on disk
    (``spill``, default the system's temporary folder). Each change of plan is
    said once, as a :class:`tiler.errors.TileprocWarning`.
    """

    def __init__(self, size: int, *, spill: str | None = None):
        if size < 1:
            raise ValueError(f"frames in flight must be >= 1, got {size}")
        self.requested = self.size = size
        self._spill_parent = spill
        self._spill: str | None = None  # the folder, once made
        self._on_disk = False  # this plan puts new slots on disk
        self._planned = 0  # the largest capacity planned for
        self._said: set[str] = set()
        self._free: list[FrameSlot] = []
        self._busy: set[FrameSlot] = set()
        self.retired: list[str] = []  # names workers should forget
        self.lent = 0  # slots whose frames the caller still views (copy-free results): places beside size

    @property
    def available(self) -> bool:
        return len(self._busy) < self.size + self.lent

    @property
    def in_use(self) -> int:
        """Slots holding a frame now."""
        return len(self._busy)

    def acquire(self, nbytes: int) -> FrameSlot:
        """A free slot of at least ``nbytes`` per frame (caller checks :attr:`available`).

        Raises :class:`TileprocError` (one line: the size needed, the space free,
        the fix) when neither /dev/shm nor the disk can hold the frame.
        """
        if not self.available:
            raise RuntimeError("no free frame slot")
        fitting = [s for s in self._free if s.capacity >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: s.capacity)
            self._free.remove(slot)
        else:
            if self._free and len(self._free) + len(self._busy) >= self.size + self.lent:
                self._retire(self._free.pop(0))
            slot = self._create(nbytes)
        self._busy.add(slot)
        return slot

    def create_slot(self, nbytes: int) -> FrameSlot:
        """A slot outside the rotation, for the caller to own and close: made where this
        ring's plan puts slots (/dev/shm, else the temporary folder), or one clear error."""
        return self._create(nbytes)

    def _retire(self, slot: FrameSlot) -> None:
        self.retired.append(slot.name)
        slot.close()

    def _create(self, nbytes: int) -> FrameSlot:
        capacity = _aligned(max(nbytes, 1))
        need = 2 * capacity
        limit = platform.file_size_limit()
        if limit is not None and need > limit:
            raise TileprocError(
                f"shared memory: a frame slot needs {_mib(need)} but the file size limit (ulimit -f) "
                f"is {_mib(limit)}; raise the limit or use smaller frames"
            )
        if capacity > self._planned:
            self._plan(capacity)
        if not self._on_disk:
            try:
                return FrameSlot(capacity, SHM_DIR)
            except NoRoom:  # another process took the space since the plan: this slot spills
                pass
        try:
            return FrameSlot(capacity, self._spill_folder(need))
        except NoRoom:
            pass
        raise TileprocError(
            f"shared memory: a frame slot needs {_mib(need)}; {SHM_DIR} has {_mib(platform.free_bytes(SHM_DIR))} "
            f"free and {self._spill_parent or tempfile.gettempdir()} "
            f"{_mib(platform.free_bytes(self._spill_parent or tempfile.gettempdir()))}; "
            f"give the container more (docker run --shm-size={_suggest(need * self.requested)}) or use smaller frames"
        )

    def _plan(self, capacity: int) -> None:
        """Decide, for slots of ``capacity``, how many frames /dev/shm can hold in flight."""
        self._planned = capacity
        need = 2 * capacity
        have = sum(1 for s in self if s.capacity >= capacity and not s.on_disk)
        # Smaller slots are retired as larger ones are made: their space counts as free.
        reclaim = sum(2 * s.capacity for s in self._free if s.capacity < capacity and not s.on_disk)
        free = platform.free_bytes(SHM_DIR)
        fits = have + ((free + reclaim) // need if free is not None else self.requested)
        total = need * self.requested
        if fits >= self.requested:
            self.size, self._on_disk = self.requested, False
        elif fits >= 1:
            self.size, self._on_disk = int(fits), False
            self._say(
                "fewer",
                TileprocWarning(
                    f"{SHM_DIR} holds {fits} frame slot(s) of {_mib(need)} ({_mib(free)} free): running with "
                    f"{fits} frame(s) in flight instead of {self.requested} "
                    f"(docker run --shm-size={_suggest(total)} for all)"
                ),
            )
        else:
            self.size, self._on_disk = self.requested, True
            self._say(
                "disk",
                TileprocWarning(
                    f"{SHM_DIR} has {_mib(free)} free, a frame slot needs {_mib(need)}: frame slots are files in "
                    f"{self._spill_parent or tempfile.gettempdir()} instead (slower; "
                    f"docker run --shm-size={_suggest(total)} to keep them in memory)"
                ),
            )

    def _say(self, kind: str, warning: TileprocWarning) -> None:
        """Warn once per ring and kind of change (a folder of growing images plans many times)."""
        if kind not in self._said:
            self._said.add(kind)
            warnings.warn(warning, stacklevel=4)

    def _spill_folder(self, need: int) -> str:
        if self._spill is None:
            parent = self._spill_parent or tempfile.gettempdir()
            free = platform.free_bytes(parent)
            if free is not None and free < need:
                raise NoRoom(errno.ENOSPC, "no space")
            path = os.path.join(parent, _new_name())
            os.mkdir(path, 0o700)
            self._spill = path
        return self._spill

    def discard(self, slot: FrameSlot) -> None:
        """Free a busy slot for good (unlink it) instead of reusing it."""
        self._busy.discard(slot)
        self._retire(slot)

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
        spill, self._spill = self._spill, None
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
        self._planned, self._on_disk, self.size = 0, False, self.requested


def _suggest(nbytes: int) -> str:
    """A ``--shm-size`` that holds ``nbytes`` with some room: whole GiB, or 256 MiB steps below one."""
    want = nbytes * 1.25
    if want <= 768 * _MiB:
        return f"{max(1, math.ceil(want / (256 * _MiB))) * 256}m"
    return f"{math.ceil(want / 2**30)}g"


def owned_entries(folders: tuple[str, ...] | None = None) -> Iterator[tuple[str, platform.Owner]]:
    """(path, owner) of every tileproc segment in /dev/shm and spill folder in the temporary
    folder (or in ``folders``)."""
    for folder in folders or (SHM_DIR, tempfile.gettempdir()):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            owner = segment_owner(name)
            if owner is not None:
                yield os.path.join(folder, name), owner


def sweep_stale_segments(folders: tuple[str, ...] | None = None) -> list[str]:
    """Remove segments (in /dev/shm) and spill folders (in the temporary folder) that
    tileproc processes left when they died; only those of provably dead owners of this
    host and pid namespace (:func:`tiler.platform.owner_dead`)."""
    removed = []
    for path, owner in owned_entries(folders):
        if not platform.owner_dead(owner):
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed
