"""Tuning of the LwM2M server: timeouts, bounds, socket sizes. Defaults follow RFC 7252 and LwM2M."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerConfig:
    #: Added to a client's lifetime before its registration expires (late Updates on slow links).
    lifetime_grace: float = 15.0
    #: Requests in flight in the whole server (one per device at most, NSTART=1); more wait their turn.
    max_in_flight: int = 1000
    #: Requests waiting or in flight for one device, and for the whole server (beyond: QueueFull).
    max_pending_per_device: int = 64
    max_pending_total: int = 50_000
    #: Default deadline of a request to a device (RFC 7252 MAX_TRANSMIT_WAIT: all CoAP retransmissions).
    request_timeout: float = 93.0
    #: How long a queue-mode device listens after it last talked (LwM2M: MAX_TRANSMIT_WAIT).
    queue_awake_time: float = 93.0
    #: Requests held for one sleeping queue-mode device, and for all of them together.
    max_held_per_device: int = 32
    max_held_total: int = 10_000
    #: Duplicate detection of incoming requests: how long (RFC 7252 EXCHANGE_LIFETIME) and how many.
    dedup_lifetime: float = 247.0
    dedup_max_entries: int = 50_000
    #: Receive buffer of the UDP socket: a registration storm must not overflow it during a GC pause.
    udp_receive_buffer: int = 16 * 1024 * 1024
    #: Admit NoSec registrations (the default admission check; the demo turns it on).
    admit_nosec: bool = False
