"""What travels through the outbox: one record per telemetry sample, attribute set or device event.

A record's ``body`` is JSON text, serialised once by its producer: the uplink packs many bodies into
one ThingsBoard message by string concatenation, never by re-parsing them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RecordKind(enum.IntEnum):
    """Where a record goes upstream. Values are stored in the outbox: never renumber."""

    TELEMETRY = 1  # child device time series   -> v1/gateway/telemetry  body: {"k":v,...}
    ATTRIBUTES = 2  # child device client attrs -> v1/gateway/attributes body: {"k":v,...}
    CONNECT = 3  # child device connected       -> v1/gateway/connect    body: {"type":"profile"}
    DISCONNECT = 4  # child device disconnected  -> v1/gateway/disconnect body: {}
    CLAIM = 5  # child device claim              -> v1/gateway/claim     body: {"secretKey":..,"durationMs":..}
    SELF_TELEMETRY = 11  # the gateway's own     -> v1/devices/me/telemetry  (device = "")
    SELF_ATTRIBUTES = 12  # the gateway's own    -> v1/devices/me/attributes (device = "")
    SELF_CLAIM = 13  # the gateway's own claim   -> v1/devices/me/claim      (device = "")


#: Kinds that the size/age bound may drop first (oldest first); the others are dropped only
#: when nothing droppable is left.
DROPPABLE_FIRST = frozenset({RecordKind.TELEMETRY, RecordKind.SELF_TELEMETRY})


@dataclass(slots=True)
class Record:
    """One queued record as read back from the outbox.

    ``ts_ms`` is the wall-clock time the value was taken, in ms since the epoch, or ``None`` when it
    was taken before the clock was synchronised and could not be re-stamped yet.
    """

    id: int
    kind: RecordKind
    device: str
    ts_ms: int | None
    body: str

    @property
    def size(self) -> int:
        return len(self.body) + len(self.device) + 32
