"""tileproc in a real Jupyter kernel (nbclient + ipykernel), as a notebook user meets it.

Filters defined in cells, a closure over a notebook variable, the call form,
check_filter, the warm default engine, and a kernel interrupt mid-job followed
by a call that works.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent

CELLS = [
    """
    import os, time
    import numpy as np
    import tiler
    from filters import filter, check_filter

    frame = np.random.default_rng(0).integers(0, 256, (300, 320, 3), dtype=np.uint8)
    """,
    # A filter defined in a cell: it lives in __main__, which workers never import.
    """
    @filter(halo=0, pointwise=True)
    def inv(tile):
        return ~tile

    out = tiler.process(frame, inv, workers=2, inline_below=0, builtins_in_process=False, tile_size=64)
    assert np.array_equal(out, ~frame)
    print("cell filter ok")
    """,
    # A closure over a notebook variable, and the call form of a cell function.
    """
    level = 77
    floor = filter(halo=0)(lambda tile: np.maximum(tile, np.uint8(level)))

    def _box(tile, *, radius=1):
        k = 2 * radius + 1
        pad = np.pad(tile.astype(np.float32), [(radius, radius), (radius, radius), (0, 0)], mode="edge")
        acc = sum(pad[i:i + tile.shape[0], j:j + tile.shape[1]] for i in range(k) for j in range(k))
        return np.rint(acc / k**2).astype(tile.dtype)

    box = filter(halo=lambda radius=1: radius)(_box)
    check_filter([floor, box(radius=2)], dtypes=["uint8"], channels=[3])
    out = tiler.process(frame, [floor, box(radius=2)], workers=2, inline_below=0, builtins_in_process=False, tile_size=64)
    assert np.array_equal(out, _box(np.maximum(frame, np.uint8(level)), radius=2))
    print("closure and call form ok")
    """,
    # The engine stays warm between calls.
    """
    tiler.process(frame, inv, workers=2, inline_below=0, builtins_in_process=False, tile_size=20)
    pids = list(tiler._default[2].pool.pids)
    tiler.process(frame, inv, workers=2, inline_below=0, builtins_in_process=False, tile_size=20)
    assert list(tiler._default[2].pool.pids) == pids
    print("warm engine ok")
    """,
    # Interrupted by the kernel (nbclient interrupts it after a few seconds).
    """
    @filter(halo=0)
    def slow(tile):
        time.sleep(0.2)
        return tile.copy()

    print("started", flush=True)
    tiler.process(frame, slow, workers=2, inline_below=0, builtins_in_process=False, tile_size=20)
    print("not interrupted")
    """,
    """
    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    deadline = time.monotonic() + 10
    while not all(map(gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, pids)), "workers of the interrupted job still run"
    assert tiler._default is None
    out = tiler.process(frame, inv, workers=2, inline_below=0, builtins_in_process=False, tile_size=20)
    assert np.array_equal(out, ~frame)
    tiler.shutdown()
    print("after interrupt ok")
    """,
]
INTERRUPTED = 4


def test_a_notebook_runs_custom_filters_and_survives_an_interrupt(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c).strip()) for c in CELLS]
    interrupted = nb.cells[INTERRUPTED]
    interrupted.metadata["tags"] = ["raises-exception"]  # its KeyboardInterrupt is expected

    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working folder
        timeout_func=lambda cell: 4 if cell is interrupted else 120,
        interrupt_on_timeout=True,
        startup_timeout=120,
    )
    client.execute(cwd=str(tmp_path))

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    assert "cell filter ok" in text(nb.cells[1])
    assert "closure and call form ok" in text(nb.cells[2])
    assert "warm engine ok" in text(nb.cells[3])
    errors = [o.ename for o in interrupted.outputs if o.output_type == "error"]
    assert "started" in text(interrupted) and "not interrupted" not in text(interrupted)
    assert errors == ["KeyboardInterrupt"]
    assert "after interrupt ok" in text(nb.cells[5])
