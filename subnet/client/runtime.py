"""A private event loop thread for the client's network I/O.

hivemind's P2P replica lives in one asyncio loop; callers may be plain threads or other
event loops. All P2P calls run here, all tensor compute stays in the caller's thread, so
the loop never blocks on compute and per-token hand-off costs one `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

import hivemind

from keys import NodeKey
from subnet.swarm.announcements import AnnouncementValidator
from subnet.swarm.dht import start_dht

T = TypeVar("T")


class ClientRuntime:
    """Owns (or borrows) a DHT and runs a background loop holding its P2P replica."""

    def __init__(self, dht: hivemind.DHT | None = None, initial_peers: Sequence[str] = (), *,
                 model_uids: Sequence[str] = (), start_timeout: float = 60.0):
        self._own_dht = dht is None
        if dht is None:
            if not initial_peers:
                raise ValueError("give initial_peers (multiaddrs of the swarm) or a running dht")
            # Client mode: the client dials hosters but accepts no inbound DHT traffic.
            # (hivemind's identity-taken check parses the key as RSA and fails on Ed25519 keys: skip it;
            # a fresh random key cannot be taken anyway.)
            try:
                dht = start_dht(NodeKey.generate(), list(initial_peers), client_mode=True,
                                check_if_identity_free=False, record_validators=client_record_validators(model_uids))
            except Exception as e:
                raise ConnectionError(f"cannot join the swarm through {list(initial_peers)}: {e}") from e
        self.dht = dht
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="mesh-client-loop", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self.p2p = self.run(self._replicate(), timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _replicate(self):
        # Our own replica (not dht.replicate_p2p's cached one, which may belong to another loop).
        from hivemind.p2p import P2P

        maddr = await self.loop.run_in_executor(None, self.dht.run_coroutine, hivemind.DHT._get_p2p_daemon_listen_maddr)
        return await P2P.replicate(maddr)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the client loop (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the client loop and wait for its result (not from the loop itself)."""
        if self.in_loop():
            coro.close()
            raise RuntimeError("ClientRuntime.run called from its own loop; await the coroutine instead")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"client operation timed out after {timeout}s") from None

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the client loop from another event loop."""
        if self.in_loop():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.loop.is_running():
            async def _shutdown() -> None:
                p2p = getattr(self, "p2p", None)
                if p2p is not None:
                    try:
                        await asyncio.wait_for(p2p.shutdown(), 5)
                    except Exception:
                        pass

            try:
                asyncio.run_coroutine_threadsafe(_shutdown(), self.loop).result(10)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if self._own_dht:
            try:
                self.dht.shutdown()
            except Exception:
                pass


async def wait_for(aw: Awaitable[T], timeout: float, what: str) -> T:
    """`asyncio.wait_for` with a message saying what timed out."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise TimeoutError(f"{what} timed out after {timeout:.1f}s") from None


def client_record_validators(model_uids: Sequence[str] = ()) -> list:
    """What a client checks on every DHT read: the hoster lists of `model_uids` as honest peers admit
    them. A peer that stores anything (an attacker) can hold a replayed, re-expired, reordered or
    junk value under a hoster's subkey; without the check a read takes that copy (the latest expiry
    wins), the parse then drops it, and the hoster vanishes from routing. With it, hivemind discards
    that peer's whole answer and the honest peers' copy is used."""
    return [AnnouncementValidator(model_uids=list(model_uids))]
