"""Requests waiting for a replica slot: the one seam a scheduling policy plugs into.

The pool needs three things from it: `put` a waiter (at the back, or at the front for one that was
woken but beaten to the slot), `wake(n)` to let up to n waiters re-run the routing choice, and
`remove` for one that gave up. This one is FIFO; a fair queue (per tenant) keeps the same shape.
"""

from __future__ import annotations

import asyncio
from collections import deque


class WaitQueue:
    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def put(self, *, front: bool = False) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        return waiter

    def remove(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def wake(self, n: int) -> None:
        """Wake up to `n` waiters, oldest first (each re-runs the routing choice)."""
        while n > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1
