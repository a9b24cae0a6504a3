"""The parent side of the workers: feeding, watching and stopping them."""

import pytest
from leaks import alive

import tiler.pool
from tiler.pool import WorkerPool


def test_close_after_an_interrupted_close_still_stops_every_worker(monkeypatch):
    pool = WorkerPool(2)
    pids = pool.pids
    stop = tiler.pool._stop
    calls = []

    def interrupted_once(w, grace):
        calls.append(w)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the first close
        return stop(w, grace)

    monkeypatch.setattr(tiler.pool, "_stop", interrupted_once)
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.close(grace=0.0)
        pool.close(grace=0.0)
        assert not alive(pids)
        pool.close()  # and again: nothing left to do
    finally:
        for w in list(pool._workers):
            stop(w, 0.0)
