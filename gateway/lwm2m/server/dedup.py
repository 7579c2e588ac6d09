"""Duplicate detection of incoming CoAP requests, bounded in time and in count.

A device retransmits a confirmable request whose acknowledgement it did not get; the server must
answer the copy with the same response instead of acting twice (RFC 7252 4.5). aiocoap keeps every
(remote, message id) for EXCHANGE_LIFETIME (247 s) with a timer handle each (about 4 KB per request
measured): a long registration storm grows memory by gigabytes. Here every entry has the same
lifetime, so insertion order is expiry order: an ``OrderedDict`` is both the index and the timer
(expired entries are dropped from its front), and a count bound drops the oldest first.

What is stored per entry is the response *recipe* the fast path produced (a small tuple), or a full
response message from aiocoap's slower path; ``None`` while the response is being prepared.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class RecentRequests:
    __slots__ = ("_entries", "dropped", "lifetime", "max_entries")

    def __init__(self, lifetime: float, max_entries: int) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        # (remote, mid) -> [expires, response or None]
        self._entries: OrderedDict[tuple[Any, int], list[Any]] = OrderedDict()
        #: Entries dropped early because of the count bound (a storm bigger than the bound).
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: tuple[Any, int]) -> list[Any] | None:
        """The entry ``[expires, response]`` of a request seen before, or None."""
        return self._entries.get(key)

    def add(self, key: tuple[Any, int], now: float) -> None:
        """Remember a new request (response not known yet)."""
        entries = self._entries
        self.purge(now)
        while len(entries) >= self.max_entries:
            entries.popitem(last=False)
            self.dropped += 1
        entries[key] = [now + self.lifetime, None]

    def set_response(self, key: tuple[Any, int], response: Any) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry[1] = response

    def purge(self, now: float) -> None:
        """Forget the requests older than the lifetime."""
        entries = self._entries
        while entries:
            if next(iter(entries.values()))[0] > now:
                break
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
