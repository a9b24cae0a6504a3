"""The child side: attach frames by name, run the chain on halo windows, write cores back.

A worker is a loop over small messages from its own pipe to the parent:

* :class:`TileBatch` -- a tile grid and a range of tile indices: run the chain on
  each tile's window of the slot's input (a read-only view, no copy) and write
  the tile's core into the slot's output. For a chain that changes the frame's
  size the grid cuts the *output* frame, and each core is mapped back through
  every stage (:func:`filters.base.plan_stages`) to the input window it is
  computed from;
* :class:`Call` -- run a module-level function on a slot (decode or encode a file);
* :class:`Forget` -- unmap a segment the parent retired;
* ``None`` -- exit.

It answers each task with :class:`Done` or :class:`Failed` (a message and the
formatted traceback; never the exception object, which may not pickle). While
a batch runs under a tile timeout it also sends a :class:`Tick` now and then,
after a tile, so that the parent times each tile rather than the batch. It maps
each segment once and keeps the mapping, caches unpickled chains by key, ignores
SIGINT (the parent handles Ctrl-C and stops it), and exits by itself when the
parent dies.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from filters.base import Stage, check_result, check_stage, output_shape, plan_stages
from tiler import platform
from tiler.geometry import Tile, TileGrid
from tiler.sharedmem import SlotRef, attach, attach_views

__all__ = [
    "TileBatch",
    "Call",
    "Forget",
    "Done",
    "Failed",
    "Tick",
    "ChainError",
    "run_chain",
    "tile_result",
    "full_plan",
    "describe_exception",
    "format_traceback",
    "release_frames",
    "worker_main",
]


@dataclass(frozen=True)
class TileBatch:
    """Tiles ``tiles`` (a range of indices) of ``grid``: a few hundred bytes whatever their count.

    ``grid`` cuts the slot's output frame. For a chain of same-size filters that
    is the input frame's size and each tile's window is its core grown by the
    chain's halo; for a chain that changes the size (any filter ``reshapes``) it
    is the output size, and the worker plans each core's stages from the chain,
    the slot's input shape and the core (:func:`filters.base.plan_stages`).
    """

    task_id: int
    slot: SlotRef
    chain_key: str
    chain_blob: bytes | None  # sent once per worker and chain, to an idle worker; None when it has it
    grid: TileGrid
    tiles: range
    tick: float | None = None  # send a Tick after a tile when this many seconds passed since the last


@dataclass(frozen=True)
class Call:
    task_id: int
    slot: SlotRef
    fn: Callable[..., Any]  # module level: fn(src, dst, *args)
    args: tuple


@dataclass(frozen=True)
class Forget:
    name: str


@dataclass(frozen=True)
class Tick:
    """Tiles of task ``task_id`` are still being finished (the tile timeout restarts)."""

    task_id: int


@dataclass(frozen=True)
class Done:
    task_id: int
    value: Any = None


@dataclass(frozen=True)
class Failed:
    task_id: int
    message: str
    traceback: str
    tile: int | None = None
    filter_name: str | None = None
    kind: str = "error"  # "error" (raised), "invalid" (bad return value), "load" (chain not loadable)
    error_class: str = ""  # the exception's class name, to rebuild tileproc's own errors
    text: str = ""  # str() of the exception


class ChainError(Exception):
    """A filter of a chain raised (kind "error") or returned something invalid ("invalid").

    The original exception is ``__cause__``.
    """

    def __init__(self, name: str, kind: str):
        super().__init__(name, kind)
        self.name, self.kind = name, kind


def run_chain(chain, window: np.ndarray, stages: tuple[Stage, ...] | None = None) -> np.ndarray:
    """Apply the filters of ``chain`` to ``window`` in order, checking each result.

    With ``stages`` (a chain that changes the frame's size), ``window`` holds the
    first stage's window and each filter computes its stage's rectangle
    (:func:`filters.base.plan_stages`); the result is the last stage's rectangle.
    """
    out = window
    for i, f in enumerate(chain):
        try:
            result = f.apply(out) if stages is None else f.apply_rect(out, stages[i])
        except Exception as exc:
            raise ChainError(f.name, "error") from exc
        try:
            if stages is None:
                check_result(f, out, result)
            else:
                check_stage(f, out, result, stages[i])
        except Exception as exc:
            raise ChainError(f.name, "invalid") from exc
        out = result
    return out


def tile_result(chain, src: np.ndarray, tile: Tile, reshapes: bool) -> np.ndarray:
    """The core of ``tile`` filtered by ``chain``, from its window of ``src``.

    Same-size chains: the chain on the core grown by the halo, cut to the core.
    A chain that changes the size (``reshapes``): ``tile`` is a core of the
    output frame, computed stage by stage from the input window it maps back to.
    """
    if reshapes:
        stages = plan_stages(chain, _rect4(tile.core), src.shape)
        r0, r1, c0, c1 = stages[0].window
        return run_chain(chain, src[r0:r1, c0:c1], stages)
    return run_chain(chain, src[tile.window.slices])[tile.core_in_window.slices]


def full_plan(chain, shape: tuple[int, ...]) -> tuple[Stage, ...] | None:
    """The stages of a whole frame for a chain that changes its size; None for one that does not."""
    if not any(f.reshapes for f in chain):
        return None
    out = output_shape(chain, shape)
    return plan_stages(chain, (0, out[0], 0, out[1]), shape)


def _rect4(r) -> tuple[int, int, int, int]:
    return (r.r0, r.r1, r.c0, r.c1)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<unprintable>"


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, safe for exceptions whose ``str`` fails."""
    text = _text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:
            pass


def release_frames(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in the tracebacks of ``exc`` and of its
    causes: a view of a slot held there would keep the segment from being unmapped."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as text; then its frames are released (:func:`release_frames`)."""
    text = "".join(traceback.format_exception(exc))
    release_frames(exc)
    return text


class _Worker:
    def __init__(self) -> None:
        self.segments: dict[str, mmap.mmap] = {}
        self.chains: dict[str, tuple | BaseException] = {}

    def views(self, ref: SlotRef, *, writable_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
        shm = self.segments.get(ref.name)
        if shm is None:
            shm = self.segments[ref.name] = attach(ref.name)
        return attach_views(shm, ref, writable_input=writable_input)

    def forget(self, name: str) -> None:
        mapping = self.segments.pop(name, None)
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # a view survived (a filter kept one): unmapped when it goes
                pass

    def tiles(self, msg: TileBatch, report: Callable[[Tick], None]) -> Done | Failed:
        chain = self.chains.get(msg.chain_key)
        if chain is None:
            try:
                assert msg.chain_blob is not None, "a chain this worker lacks comes with its blob"
                chain = pickle.loads(msg.chain_blob)
            except BaseException as exc:  # e.g. a filter module the worker cannot import
                chain = exc
            self.chains[msg.chain_key] = chain
        if isinstance(chain, BaseException):  # the same failure for every task of this chain
            return Failed(msg.task_id, describe_exception(chain), format_traceback(chain), kind="load")
        src, dst = self.views(msg.slot)
        reshapes = any(f.reshapes for f in chain)
        last = time.monotonic()
        for index in msg.tiles:
            tile = msg.grid[index]
            try:
                out = tile_result(chain, src, tile, reshapes)
            except ChainError as exc:
                cause = exc.__cause__
                assert cause is not None  # run_chain raises ChainError from the filter's exception
                return Failed(
                    msg.task_id,
                    describe_exception(cause),
                    format_traceback(cause),
                    tile=tile.index,
                    filter_name=exc.name,
                    kind=exc.kind,
                )
            dst[tile.core.slices] = out
            if msg.tick is not None and time.monotonic() - last >= msg.tick:
                report(Tick(msg.task_id))
                last = time.monotonic()
        return Done(msg.task_id)

    def call(self, msg: Call) -> Done | Failed:
        src, dst = self.views(msg.slot, writable_input=True)
        try:
            return Done(msg.task_id, msg.fn(src, dst, *msg.args))
        except BaseException as exc:
            return Failed(
                msg.task_id,
                describe_exception(exc),
                format_traceback(exc),
                error_class=type(exc).__name__,
                text=_text(exc),
            )


def worker_main(conn, parent_pid: int, threads: int = 1) -> None:
    """Entry point of a worker process: serve tasks from ``conn`` until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    platform.keep_heap()
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    worker = _Worker()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        if isinstance(msg, Forget):
            worker.forget(msg.name)
            continue
        try:
            reply = worker.tiles(msg, conn.send) if isinstance(msg, TileBatch) else worker.call(msg)
        except BaseException as exc:  # attaching, unpickling: report, don't die
            reply = Failed(msg.task_id, describe_exception(exc), format_traceback(exc))
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    for name in list(worker.segments):
        worker.forget(name)
