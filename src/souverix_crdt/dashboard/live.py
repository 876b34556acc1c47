"""Following a federation as it changes: a revision counter, a snapshot cache, a notifier.

The federation is not thread-safe, and the dashboard reads it from the web server's threads
while its owner keeps mutating it on its own thread. Two rules keep that sound:

* every read of replicated state happens under :attr:`Dashboard.lock` (a re-entrant lock); an
  owner that mutates the federation while a dashboard is live holds the same lock around each
  mutation (``with dashboard.lock: manager.settle()``);
* change callbacks (``on_change``, ``on_conflict``), which run on the mutating thread in the
  middle of its work, never read state and never take the lock: they bump a counter and wake
  the server's event loop, which coalesces bursts (a settle fires hundreds of callbacks) into
  one revision pushed to the pages.

Link state and sync debt change without any replica callback (a link going down, an ack
settling debt), so the notifier also polls a cheap fingerprint of them every
``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from souverix_crdt.conflicts import ConflictRecord
from souverix_crdt.document import Change
from souverix_crdt.federation.manager import FederationManager
from souverix_crdt.plane.topology import Topology
from souverix_crdt.replica import Replica

from .model import Source

__all__ = ["Dashboard"]

#: How long change callbacks are gathered into one revision (seconds).
COALESCE_S: Final = 0.05
#: Attempts at reading state when an owner mutates it without holding the lock.
_READ_ATTEMPTS: Final = 3


class Dashboard:
    """Watches a federation (or one replica) and serves consistent snapshots of it.

    Args:
        target: What to show: a federation manager, or a single replica.
        topology: For a single replica, its federation's topology (optional).
        poll_interval: Seconds between polls of link state and sync debt.
    """

    def __init__(
        self,
        target: FederationManager | Replica,
        *,
        topology: Topology | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.source = Source(target, topology=topology)
        self.poll_interval = poll_interval
        #: Hold this while mutating the federation from another thread than the server's.
        self.lock = threading.RLock()
        self._pending = 0  # callbacks since the last revision; only ever incremented elsewhere
        self._revision = 0
        self._cache: tuple[int, dict[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None
        self._closing = False
        self._unsubscribe: list[Callable[[], None]] = []
        for replica in self.source.replicas_watched():
            self._unsubscribe.append(replica.on_change(self._on_change))
            self._unsubscribe.append(replica.on_conflict(self._on_conflict))

    # ------------------------------------------------------------------ callbacks (any thread)

    def _on_change(self, changes: Sequence[Change]) -> None:
        del changes  # what changed is re-read from the replicas: the page shows state, not diffs
        self.touch()

    def _on_conflict(self, record: ConflictRecord) -> None:
        del record
        self.touch()

    def touch(self) -> None:
        """Note that state changed (from any thread); pages refresh shortly after."""
        self._pending += 1
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            # The loop may close between the check and the call: then there is nobody to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    # ------------------------------------------------------------------ reading (server threads)

    @property
    def revision(self) -> int:
        """Increases each time the pages are told to refresh."""
        return self._revision

    def read(self, reader: Callable[[Source], Any]) -> Any:
        """Run ``reader`` over the source under the lock.

        An owner that mutates without the lock can make iteration over a dict fail part way
        (``RuntimeError: dictionary changed size``); such a read is simply taken again.
        """
        for attempt in range(_READ_ATTEMPTS):
            with self.lock:
                try:
                    return reader(self.source)
                except RuntimeError:
                    if attempt == _READ_ATTEMPTS - 1:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def snapshot(self) -> dict[str, Any]:
        """The page's data at the current revision (computed once per revision)."""
        revision = self._revision
        cached = self._cache
        if cached is not None and cached[0] == revision:
            return cached[1]
        data: dict[str, Any] = self.read(Source.snapshot)
        data["revision"] = revision
        # Stamped with the revision read *before* computing: a change that lands meanwhile
        # bumps the revision, so the next request recomputes rather than serving stale data.
        self._cache = (revision, data)
        return data

    # ------------------------------------------------------------------ the notifier (server loop)

    async def run_notifier(self) -> None:
        """Turn callbacks and polled link changes into revisions until :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        seen = self._pending
        fingerprint = await asyncio.to_thread(self.read, Source.link_fingerprint)
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
                # Let the rest of a burst arrive: one revision for a whole settle().
                await asyncio.sleep(COALESCE_S)
            except TimeoutError:
                pass
            self._wake.clear()
            current = await asyncio.to_thread(self.read, Source.link_fingerprint)
            pending = self._pending
            if pending != seen or current != fingerprint:
                seen, fingerprint = pending, current
                await self._publish()
        await self._publish()  # wake the streams so they see the close

    async def _publish(self) -> None:
        self._revision += 1
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_revision(self, after: int, timeout: float) -> int:
        """Wait until the revision passes ``after`` (or ``timeout`` seconds); return it."""
        if self._changed is None:
            await asyncio.sleep(timeout)
            return self._revision
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._revision > after or self._closing),
                    timeout,
                )
        return self._revision

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    def close(self) -> None:
        """Stop following the replicas and end the notifier and the event streams."""
        self._closing = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self.touch()
