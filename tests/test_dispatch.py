"""The scheduler's helpers: the slots lent to the caller go back to the ring when dropped."""

import weakref

from tiler.dispatch import Loans
from tiler.sharedmem import FrameRing


class Lease:
    pass


def test_lent_slots_grow_the_ring_up_to_its_size_and_come_back_when_dropped():
    ring = FrameRing(2)
    loans = Loans(ring)
    try:
        leases = [Lease() for _ in range(3)]
        for lease in leases:
            loans.hold(ring.acquire(100), weakref.ref(lease))
        del lease
        assert len(loans) == 3 and ring.size + ring.lent == 4  # two extra places, no more
        assert ring.available  # one more frame may start
        ring.acquire(100)
        assert not ring.available
        loans.reclaim()
        assert len(loans) == 3  # every lease alive: nothing given back
        del leases[0]
        loans.reclaim()
        assert len(loans) == 2 and ring.size + ring.lent == 4 and ring.in_use == 3
        leases.clear()
        loans.reclaim()
        assert len(loans) == 0 and ring.size + ring.lent == 2 and ring.in_use == 1
        assert "still referenced" in loans.exhausted()
    finally:
        ring.close()
