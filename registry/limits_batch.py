"""Script calls issued in one event-loop tick, sent to Redis as one pipelined round trip.

    batcher = ScriptBatcher(redis, timeout=0.25, wrap=to_domain_error)
    script = batcher.script(lua_source)
    replies = await batcher.submit([(script, keys, args), ...])  # a reply or ResponseError each

Why it is shaped this way:
- Under load a gateway admits and settles many requests per event-loop iteration; one
  EVALSHA per request costs a pool checkout, a command encode, a reply parse and a round trip
  each. Calls submitted before the loop's next iteration share one pipeline instead (`MAX_BATCH`
  calls at most per pipeline; a larger tick sends several at once). Nothing waits for a batch to
  fill: an idle gateway sends a lone call at once, one iteration later.
- A pipeline is not a transaction, and need not be: each script is atomic by itself, exactly as
  when it is sent alone, and calls keep their submission order on the connection. Batching changes
  the client's cost, never what Redis decides.
- One hard timeout per pipeline (the round trip is the Redis call): a frozen or unreachable Redis
  fails every call of the batch with the same exception, which the caller maps to its fallback.
- Each call gets its own reply; a script error on one call (`ResponseError`) is that call's reply
  and does not fail its neighbours. Calls that met NOSCRIPT (a restarted or flushed Redis) did not
  run: the scripts are loaded and those calls sent again, once, inside the same timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

MAX_BATCH = 256
pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command  # its stub says a 1-tuple


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str


Call = tuple[Script, Sequence[str], Sequence[Any]]
_Group = tuple[Sequence[Call], "asyncio.Future[list[Any]]"]  # one submit: its calls, its answer


class ScriptBatcher:
    """Coalesces script calls per event-loop tick; see the module docstring."""

    def __init__(
        self, redis: Redis, *, timeout: float, wrap: Callable[[BaseException], BaseException]
    ) -> None:
        """`wrap` turns a batch's failure into the exception each waiter gets (a new object per
        waiter: one object raised in many tasks would share and grow one traceback)."""
        self._redis = redis
        self._timeout = timeout
        self._wrap = wrap
        self._outbox: list[_Group] = []
        self._sender: asyncio.Task[None] | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines written (tests and benchmarks read it)

    @staticmethod
    def script(source: str) -> Script:
        return Script(source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324 (Redis's id)

    def submit(self, calls: Sequence[Call]) -> asyncio.Future[list[Any]]:
        """Queue `calls` for this tick's pipeline; the future gets one reply per call (a
        `ResponseError` instance for a call whose script failed), or the batch's exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._outbox.append((calls, future))
        if self._sender is None or self._sender.done():  # done: cancelled before it ran
            self._sender = loop.create_task(self._send_tick(), name="limits-batch")
            self._senders.add(self._sender)
            self._sender.add_done_callback(self._senders.discard)
        return future

    async def _send_tick(self) -> None:
        # First step of the task: one loop iteration after the first submit of the tick.
        groups, self._outbox = self._outbox, []
        self._sender = None
        chunk: list[_Group] = []
        size = 0
        chunks = []
        for group in groups:
            if chunk and size + len(group[0]) > MAX_BATCH:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(group)
            size += len(group[0])
        chunks.append(chunk)
        if len(chunks) == 1:
            await self._send(chunks[0])
        else:
            await asyncio.gather(*(self._send(c) for c in chunks))

    async def _send(self, groups: list[_Group]) -> None:
        calls = [call for group, _ in groups for call in group]
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._pipeline(calls)
                retry = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if retry:
                    for source in {calls[i][0].source for i in retry}:
                        await self._redis.script_load(source)
                    again = await self._pipeline([calls[i] for i in retry])
                    for i, reply in zip(retry, again, strict=True):
                        replies[i] = reply
        except BaseException as exc:
            for _, future in groups:
                if not future.done():
                    future.set_exception(self._wrap(exc))
            if not isinstance(exc, Exception):
                raise
            return
        at = 0
        for group, future in groups:
            if not future.done():  # a caller cancelled meanwhile
                future.set_result(replies[at : at + len(group)])
            at += len(group)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        """One write of every call (encoded by hiredis, in C), then one reply per call read in
        order: redis-py's own Pipeline encodes each argument in Python, which on the hot path
        cost more than the round trip it saved."""
        packed = b"".join(
            pack(("EVALSHA", script.sha, len(keys), *keys, *args)) for script, keys, args in calls
        )
        pool = self._redis.connection_pool
        self.round_trips += 1
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # Both calls drop the connection on any failure, a cancellation included, so a
            # connection with replies left unread never goes back to the pool.
            await conn.send_packed_command(packed)
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # that call's reply; the connection stays in step
                    replies.append(exc)
            return replies
        finally:
            await pool.release(conn)
