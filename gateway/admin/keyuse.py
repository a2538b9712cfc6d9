"""Keys' last use, to the minute, off the request path.

The hot path only notes `state.key_use[key_hmac] = minute` (a dict store, no I/O). This loop
writes what was noted with one HSET per interval (`settings.key_use_flush_s`, 60 s by default),
so Redis sees at most one write per key per interval per gateway whatever the traffic. With
several gateways each writes its own minutes; the latest write wins, and minutes only move
forward within an interval, so the stored value is the last use to within the interval.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.state import AppState
from registry.errors import RegistryUnavailable

log = logging.getLogger("loragate.keyuse")


async def flush(state: AppState) -> None:
    if not state.key_use:
        return
    batch, state.key_use = state.key_use, {}
    try:
        await state.store.record_key_uses(batch)
    except RegistryUnavailable:
        for key_hmac, minute in batch.items():  # keep them for the next round
            state.key_use[key_hmac] = max(minute, state.key_use.get(key_hmac, 0))
        log.warning("key last-use not written: registry unavailable")


async def flush_loop(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.settings.key_use_flush_s)
        await flush(state)
