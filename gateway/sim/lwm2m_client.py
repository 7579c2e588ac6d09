"""LwM2M fleet simulator: many NoSec LwM2M clients in one process, for tests, benchmarks and load tests.

Each simulated client has its own UDP socket (so the server sees N devices at N addresses) and the
objects 1 (Server), 3 (Device) and 3303 (Temperature), plus 19 (Binary App Data Container) when given
a ``blob``. It registers, updates, de-registers, answers Read, Discover, Write, Write-Attributes,
Execute, Create, Delete, Read/Write-Composite, Observe and Observe-Composite in whatever content format
the server asks for (through the project's codecs), does block-wise both ways, and sends notifications
(CON or NON) at a chosen interval, plus Send (``POST /dp``).

There is no task per client: every socket is an ``add_reader`` callback and every timer (CoAP
retransmissions, Updates, notifications) lives in one :class:`~gateway.lwm2m.server.timers.TimerQueue`.
The CoAP wire format is written here, independently of aiocoap, so the server is exercised by a
second implementation.

Knobs for bad-device tests: ``client.silent`` (receives but never answers requests), ``client.asleep``
(drops everything, as a queue-mode device that is offline), ``client.wrong_format`` (answers Reads with
a Content-Format that does not match the payload), ``client.truncate`` (answers with a truncated payload).

Command line (one process of a benchmark fleet)::

    python -m gateway.sim.lwm2m_client --server 127.0.0.1:5683 --count 5000 --prefix sim-a- \\
        --notify-interval 4 --duration 180

prints one JSON line per ``--stats-interval`` seconds to stdout.

Over serial ports instead of UDP (the Non-IP binding: CoAP in slipmux frames, one client per port,
see :mod:`gateway.sim.serial_link`)::

    python -m gateway.sim.lwm2m_client --serial /dev/ttyUSB0 --binding N --notify-interval 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from gateway.lwm2m.codec import CodecError, ContentFormat, decode, decode_paths, encode, encode_timestamped
from gateway.lwm2m.codec.text import format_text_value
from gateway.lwm2m.linkformat import (
    DiscoveredLink,
    RegisteredObject,
    RegistrationLinks,
    encode_discover,
    encode_registration,
)
from gateway.lwm2m.model.registry import ModelRegistry
from gateway.lwm2m.model.types import Operations
from gateway.lwm2m.node import (
    ModelLookup,
    NodeError,
    ObjectInstanceNode,
    TimestampedValue,
    Value,
    infer_type,
    iter_leaves,
    node_from_values,
)
from gateway.lwm2m.path import LwM2mPath, PathError
from gateway.lwm2m.server.timers import TimerQueue
from gateway.serial.port import ByteLink
from gateway.sim.serial_link import SlipmuxDatagrams, serial_links

# -- CoAP wire format (RFC 7252), just what a client needs ---------------------------------------------

CON: Final = 0
NON: Final = 1
ACK: Final = 2
RST: Final = 3

EMPTY: Final = 0
GET: Final = 1
POST: Final = 2
PUT: Final = 3
DELETE: Final = 4
FETCH: Final = 5
IPATCH: Final = 7


def code(klass: int, detail: int) -> int:
    return klass << 5 | detail


CREATED: Final = code(2, 1)
DELETED: Final = code(2, 2)
CHANGED: Final = code(2, 4)
CONTENT: Final = code(2, 5)
CONTINUE: Final = code(2, 31)
BAD_REQUEST: Final = code(4, 0)
NOT_FOUND: Final = code(4, 4)
METHOD_NOT_ALLOWED: Final = code(4, 5)
NOT_ACCEPTABLE: Final = code(4, 6)
REQUEST_ENTITY_INCOMPLETE: Final = code(4, 8)
UNSUPPORTED_CONTENT_FORMAT: Final = code(4, 15)

OBSERVE: Final = 6
LOCATION_PATH: Final = 8
URI_PATH: Final = 11
CONTENT_FORMAT: Final = 12
URI_QUERY: Final = 15
ACCEPT: Final = 17
BLOCK2: Final = 23
BLOCK1: Final = 27
SIZE1: Final = 60

Option = tuple[int, bytes]

ACK_TIMEOUT: Final = 2.0
ACK_RANDOM_FACTOR: Final = 1.5
MAX_RETRANSMIT: Final = 4


class WireError(ValueError):
    """A datagram that is not a CoAP message."""


class CoapMessage:
    __slots__ = ("code", "mid", "mtype", "options", "payload", "token")

    def __init__(self, mtype: int, code: int, mid: int, token: bytes, options: list[Option], payload: bytes) -> None:
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options
        self.payload = payload

    def option(self, number: int) -> bytes | None:
        for n, value in self.options:
            if n == number:
                return value
        return None

    def uint(self, number: int) -> int | None:
        value = self.option(number)
        return None if value is None else int.from_bytes(value, "big")

    def strings(self, number: int) -> list[str]:
        return [value.decode("utf-8", "replace") for n, value in self.options if n == number]


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _extended(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode_message(
    mtype: int, code: int, mid: int, token: bytes, options: Iterable[Option] = (), payload: bytes = b""
) -> bytes:
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8 & 0xFF, mid & 0xFF))
    out += token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta, delta_ext = _extended(number - last)
        length, length_ext = _extended(len(value))
        out.append(delta << 4 | length)
        out += delta_ext
        out += length_ext
        out += value
        last = number
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def decode_message(data: bytes) -> CoapMessage:
    n = len(data)
    if n < 4 or data[0] >> 6 != 1:
        raise WireError("not a CoAP message")
    tkl = data[0] & 0x0F
    if tkl > 8 or 4 + tkl > n:
        raise WireError("bad token length")
    pos = 4 + tkl
    options: list[Option] = []
    number = 0
    payload = b""
    while pos < n:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            payload = data[pos:]
            if not payload:
                raise WireError("payload marker without payload")
            break
        delta, length = byte >> 4, byte & 0x0F
        delta, pos = _read_extended(data, pos, delta)
        length, pos = _read_extended(data, pos, length)
        if pos + length > n:
            raise WireError("option runs past the end")
        number += delta
        options.append((number, data[pos : pos + length]))
        pos += length
    return CoapMessage(data[0] >> 4 & 3, data[1], data[2] << 8 | data[3], data[4 : 4 + tkl], options, payload)


def _read_extended(data: bytes, pos: int, nibble: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            raise WireError("truncated option")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise WireError("truncated option")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise WireError("reserved option nibble 15")


def _notification_bytes(con: bool, mid: int, token: bytes, seq: int, fmt: int, payload: bytes) -> bytes:
    """A 2.05 notification with Observe and Content-Format: what :func:`encode_message` makes, quicker."""
    observe = uint(seq)
    cf = uint(fmt)
    head = bytes(((0x40 if con else 0x50) | len(token), CONTENT, mid >> 8, mid & 0xFF))
    # Observe is option 6 (delta 6), Content-Format 12 (delta 6); both values are at most 3 bytes
    return b"".join((head, token, bytes((0x60 | len(observe),)), observe, bytes((0x60 | len(cf),)), cf,
                     b"\xff", payload))


def block_option(number: int, more: bool, szx: int) -> bytes:
    return uint(number << 4 | (8 if more else 0) | szx)


def parse_block(value: bytes) -> tuple[int, bool, int]:
    raw = int.from_bytes(value, "big")
    return raw >> 4, bool(raw & 8), raw & 7


# -- the simulated objects ---------------------------------------------------------------------------------

P: Final = LwM2mPath
SSID, LIFETIME, STORING, BINDING, UPDATE_TRIGGER = P(1, 0, 0), P(1, 0, 1), P(1, 0, 6), P(1, 0, 7), P(1, 0, 8)
MANUFACTURER, MODEL_NUMBER, SERIAL, FIRMWARE = P(3, 0, 0), P(3, 0, 1), P(3, 0, 2), P(3, 0, 3)
REBOOT, BATTERY, ERROR_CODE = P(3, 0, 4), P(3, 0, 9), P(3, 0, 11, 0)
CURRENT_TIME, DEVICE_BINDING = P(3, 0, 13), P(3, 0, 16)
TEMPERATURE, TEMP_MIN, TEMP_MAX, TEMP_UNITS, TEMP_RESET = (
    P(3303, 0, 5700),
    P(3303, 0, 5601),
    P(3303, 0, 5602),
    P(3303, 0, 5701),
    P(3303, 0, 5605),
)
BLOB: Final = P(19, 0, 0, 0)
EXECUTABLE: Final = frozenset({UPDATE_TRIGGER, REBOOT, TEMP_RESET, P(3, 0, 5), P(1, 0, 4)})
_DEFAULT_FORMATS: Final = (
    ContentFormat.SENML_CBOR,
    ContentFormat.SENML_JSON,
    ContentFormat.TLV,
    ContentFormat.LWM2M_CBOR,
    ContentFormat.LWM2M_JSON,
)


class _Observation:
    __slots__ = ("composite", "fmt", "paths", "seq", "timer", "token")

    def __init__(self, token: bytes, paths: tuple[LwM2mPath, ...], fmt: int, composite: bool) -> None:
        self.token = token
        self.paths = paths
        self.fmt = fmt
        self.composite = composite
        self.seq = 2
        self.timer: list[Any] | None = None


class _Outgoing:
    """A CON this client sent, retransmitted until acknowledged."""

    __slots__ = ("attempt", "callback", "data", "mid", "timeout", "timer", "token")

    def __init__(self, mid: int, token: bytes, data: bytes, callback: Callable[[CoapMessage | None], None] | None):
        self.mid = mid
        self.token = token
        self.data = data
        self.callback = callback
        self.attempt = 0
        self.timeout = ACK_TIMEOUT * random.uniform(1.0, ACK_RANDOM_FACTOR)
        self.timer: list[Any] | None = None


class SimClient:
    """One simulated LwM2M client (see the module docstring)."""

    __slots__ = (
        "_block1",
        "_non_sent",
        "_recent",
        "asleep",
        "attributes",
        "battery",
        "blob",
        "endpoint",
        "executions",
        "fleet",
        "instances",
        "last_error",
        "lifetime",
        "location",
        "mid",
        "observations",
        "outgoing",
        "overrides",
        "registered",
        "silent",
        "sock",
        "temperature",
        "token_seq",
        "truncate",
        "update_timer",
        "writes",
        "wrong_format",
    )

    def __init__(self, fleet: Fleet, endpoint: str, sock: socket.socket | SlipmuxDatagrams) -> None:
        self.fleet = fleet
        self.endpoint = endpoint
        self.sock = sock
        self.location: tuple[str, ...] = ()
        self.registered = False
        self.mid = random.randrange(0x10000)
        self.token_seq = random.randrange(0x10000)
        self.temperature = 20.0 + random.random() * 5
        self.battery = 100
        self.lifetime = fleet.lifetime
        self.overrides: dict[LwM2mPath, Value] | None = None
        self.instances: set[int] = {0}  # of object 3303
        self.blob: bytes | None = fleet.blob
        self.observations: dict[bytes, _Observation] = {}
        self.outgoing: dict[int, _Outgoing] = {}
        self.update_timer: list[Any] | None = None
        self._recent: list[tuple[int, bytes]] = []
        self._non_sent: dict[int, bytes] = {}  # recent NON notifications: mid -> token (an RST cancels)
        self._block1: tuple[str, bytearray] | None = None
        self.silent = False
        self.asleep = False
        self.wrong_format = False
        self.truncate = False
        self.last_error: int | None = None
        self.executions: list[tuple[str, bytes]] = []
        self.writes: list[LwM2mPath] = []
        self.attributes: dict[str, tuple[str, ...]] = {}

    # -- sending -------------------------------------------------------------------------------------

    def _next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def _next_token(self) -> bytes:
        self.token_seq = (self.token_seq + 1) & 0xFFFF
        return self.token_seq.to_bytes(2, "big")

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
            self.fleet.stats["datagrams_sent"] += 1
        except OSError:
            self.fleet.stats["send_errors"] += 1

    def request(
        self,
        code: int,
        options: list[Option],
        payload: bytes = b"",
        callback: Callable[[CoapMessage | None], None] | None = None,
        *,
        confirmable: bool = True,
        token: bytes | None = None,
    ) -> None:
        """Send a request (CON by default); ``callback`` gets the response or None on timeout."""
        mid = self._next_mid()
        token = self._next_token() if token is None else token
        data = encode_message(CON if confirmable else NON, code, mid, token, options, payload)
        if confirmable:
            out = _Outgoing(mid, token, data, callback)
            self.outgoing[mid] = out
            out.timer = self.fleet.timers.call_at(self.fleet.loop.time() + out.timeout, self._retransmit, out)
        self._send(data)

    def _retransmit(self, out: _Outgoing) -> None:
        out.timer = None
        if self.outgoing.get(out.mid) is not out:
            return
        if out.attempt >= MAX_RETRANSMIT:
            del self.outgoing[out.mid]
            self.fleet.stats["timeouts"] += 1
            if out.callback is not None:
                out.callback(None)
            return
        out.attempt += 1
        out.timeout *= 2
        self.fleet.stats["retransmissions"] += 1
        self._send(out.data)
        out.timer = self.fleet.timers.call_at(self.fleet.loop.time() + out.timeout, self._retransmit, out)

    # -- registration --------------------------------------------------------------------------------

    def registration_links(self) -> RegistrationLinks:
        fleet = self.fleet
        objects = {
            1: RegisteredObject(1, None, (0,)),
            3: RegisteredObject(3, None, (0,)),
            3303: RegisteredObject(3303, None, tuple(sorted(self.instances))),
        }
        if self.blob is not None:
            objects[19] = RegisteredObject(19, None, (0,))
        formats = () if fleet.lwm2m_version == "1.0" else fleet.content_formats
        return RegistrationLinks("/", formats, objects)

    def register(self) -> None:
        fleet = self.fleet
        query = [f"ep={self.endpoint}", f"lt={self.lifetime}", f"lwm2m={fleet.lwm2m_version}", f"b={fleet.binding}"]
        if fleet.queue_mode:
            query.append("Q")
        payload = encode_registration(self.registration_links(), quote_versions=fleet.lwm2m_version == "1.0")
        options = [(URI_PATH, b"rd"), (CONTENT_FORMAT, uint(ContentFormat.LINK))]
        options += [(URI_QUERY, q.encode()) for q in query]
        fleet.stats["register_sent"] += 1
        self.request(POST, options, payload, self._registered)

    def _registered(self, response: CoapMessage | None) -> None:
        fleet = self.fleet
        if response is None or response.code != CREATED:
            self.last_error = None if response is None else response.code
            fleet.stats["register_failed"] += 1
            fleet.changed()
            return
        was = self.registered
        self.location = tuple(response.strings(LOCATION_PATH))
        self.registered = True
        if not was:
            fleet.registered += 1
        self._schedule_update()
        fleet.changed()

    def _schedule_update(self) -> None:
        fleet = self.fleet
        fleet.timers.cancel(self.update_timer)
        interval = fleet.update_interval if fleet.update_interval is not None else self.lifetime * 0.5
        self.update_timer = fleet.timers.call_at(fleet.loop.time() + interval, SimClient._auto_update, self)

    def _auto_update(self) -> None:
        self.update_timer = None
        if self.registered:
            self.update()

    def update(self, *, with_objects: bool = False, lifetime: int | None = None) -> None:
        """Send an Update (``with_objects``: with the object list; ``lifetime``: a new lifetime)."""
        if lifetime is not None:
            self.lifetime = lifetime
        options = [(URI_PATH, seg.encode()) for seg in self.location]
        if lifetime is not None:
            options.append((URI_QUERY, f"lt={lifetime}".encode()))
        payload = b""
        if with_objects:
            payload = encode_registration(self.registration_links())
            options.append((CONTENT_FORMAT, uint(ContentFormat.LINK)))
        self.fleet.stats["update_sent"] += 1
        self.asleep = False
        self.request(POST, options, payload, self._updated)

    def _updated(self, response: CoapMessage | None) -> None:
        fleet = self.fleet
        if response is not None and response.code == CHANGED:
            fleet.stats["updated"] += 1
            self._schedule_update()
        elif response is not None and response.code == NOT_FOUND:
            self.registered = False
            fleet.registered -= 1
            self.register()
        else:
            fleet.stats["update_failed"] += 1
        fleet.changed()

    def deregister(self) -> None:
        if not self.registered:
            return
        self.fleet.timers.cancel(self.update_timer)
        self.update_timer = None
        self.registered = False
        self.fleet.registered -= 1
        for obs in self.observations.values():
            self.fleet.timers.cancel(obs.timer)
        self.observations.clear()
        self.request(DELETE, [(URI_PATH, seg.encode()) for seg in self.location], b"", self._deregistered)

    def _deregistered(self, response: CoapMessage | None) -> None:
        ok = response is not None and response.code == DELETED
        self.fleet.stats["deregistered" if ok else "deregister_failed"] += 1
        self.fleet.changed()

    def send_values(self, paths: Iterable[LwM2mPath], fmt: int = ContentFormat.SENML_CBOR) -> None:
        """LwM2M Send (``POST /dp``) of the current values under ``paths``."""
        now = time.time()
        values = [TimestampedValue(p, v, now) for path in paths for p, v in self._values_under(path).items()]
        if fmt == ContentFormat.LWM2M_CBOR:  # carries no times
            payload = encode(fmt, {v.path: v.value for v in values}, None, self.fleet.model_of)
        else:
            payload = encode_timestamped(fmt, values, self.fleet.model_of)
        options = [(URI_PATH, b"dp"), (CONTENT_FORMAT, uint(fmt))]
        self.fleet.stats["send_sent"] += 1
        self.asleep = False
        self.request(POST, options, payload, self._sent)

    def _sent(self, response: CoapMessage | None) -> None:
        self.fleet.stats["send_ok" if response is not None and response.code == CHANGED else "send_failed"] += 1
        self.fleet.changed()

    # -- values -------------------------------------------------------------------------------------

    def _all_values(self) -> dict[LwM2mPath, Value]:
        values: dict[LwM2mPath, Value] = {
            SSID: 1,
            LIFETIME: self.lifetime,
            STORING: False,
            BINDING: self.fleet.binding,
            MANUFACTURER: "edge-gateway",
            MODEL_NUMBER: "fleet-sim",
            SERIAL: self.endpoint,
            FIRMWARE: "1.0",
            BATTERY: self.battery,
            ERROR_CODE: 0,
            CURRENT_TIME: int(time.time()),
            DEVICE_BINDING: self.fleet.binding,
        }
        for iid in sorted(self.instances):
            values[P(3303, iid, 5700)] = round(self.temperature, 2)
            values[P(3303, iid, 5701)] = "Cel"
            values[P(3303, iid, 5601)] = 15.0
            values[P(3303, iid, 5602)] = 30.0
        if self.blob is not None:
            values[BLOB] = self.blob
        if self.overrides:
            for path, value in self.overrides.items():
                if path.depth < 2 or path.object_id != 3303 or path.instance_id in self.instances:
                    values[path] = value
        return values

    def _value(self, path: LwM2mPath) -> Value | None:
        """The value of one resource (instance), None if there is none."""
        if not self.overrides:
            if path == TEMPERATURE:
                return round(self.temperature, 2)
            if path == BATTERY:
                return self.battery
        return self._all_values().get(path)

    def _values_under(self, path: LwM2mPath) -> dict[LwM2mPath, Value]:
        if path == TEMPERATURE and not self.overrides:
            return {TEMPERATURE: round(self.temperature, 2)}
        return {p: v for p, v in self._all_values().items() if p.startswith(path)}

    def step(self) -> None:
        """The physical world moves on: the temperature wanders, the battery drains."""
        self.temperature += random.uniform(-0.5, 0.5)
        if random.random() < 0.01:
            self.battery = max(0, self.battery - 1)

    # -- receiving ----------------------------------------------------------------------------------

    def readable(self) -> None:
        fleet = self.fleet
        for _ in range(16):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                fleet.stats["receive_errors"] += 1
                return
            fleet.stats["datagrams_received"] += 1
            if self.asleep:
                continue
            try:
                message = decode_message(data)
            except WireError:
                fleet.stats["unparsable"] += 1
                continue
            self._on_message(message)
            if fleet._waiters:
                fleet.changed()

    def _on_message(self, m: CoapMessage) -> None:
        if m.code == EMPTY:
            if m.mtype in (ACK, RST):
                self._on_ack(m)
            elif m.mtype == CON:
                self._send(encode_message(RST, EMPTY, m.mid, b""))
            return
        if m.code < 32:
            self._on_request(m)
        else:
            self._on_response(m)

    def _on_ack(self, m: CoapMessage) -> None:
        out = self.outgoing.get(m.mid)
        if out is None:
            token = self._non_sent.pop(m.mid, None)
            if m.mtype == RST and token is not None and token in self.observations:
                self.fleet.timers.cancel(self.observations.pop(token).timer)
                self.fleet.observations -= 1
                self.fleet.stats["observations_reset"] += 1
                self.fleet.changed()
            return
        if m.mtype == RST:
            del self.outgoing[m.mid]
            self.fleet.timers.cancel(out.timer)
            obs = self.observations.pop(out.token, None)
            if obs is not None:
                self.fleet.timers.cancel(obs.timer)
                self.fleet.observations -= 1
                self.fleet.stats["observations_reset"] += 1
                self.fleet.changed()
            if out.callback is not None:
                out.callback(None)
            return
        # empty ACK: the answer comes separately; stop retransmitting, keep waiting by token
        self.fleet.timers.cancel(out.timer)
        out.timer = None
        if out.callback is None:
            del self.outgoing[m.mid]

    def _on_response(self, m: CoapMessage) -> None:
        out = self.outgoing.get(m.mid) if m.mtype == ACK else None
        if out is None:
            out = next((o for o in self.outgoing.values() if o.token == m.token), None)
        if m.mtype == CON:
            self._send(encode_message(ACK, EMPTY, m.mid, b""))
        if out is None:
            return
        del self.outgoing[out.mid]
        self.fleet.timers.cancel(out.timer)
        if out.callback is not None:
            out.callback(m)

    def _on_request(self, m: CoapMessage) -> None:
        fleet = self.fleet
        fleet.stats["requests_received"] += 1
        if self.silent:
            return
        for mid, answer in self._recent:
            if mid == m.mid:
                self._send(answer)
                return
        try:
            code, options, payload = self._handle(m)
        except Exception as e:  # a simulator bug must not kill the fleet: answer 5.00
            code, options, payload = code_500(e)
        if m.mtype == CON:
            data = encode_message(ACK, code, m.mid, m.token, options, payload)
            self._recent.append((m.mid, data))
            if len(self._recent) > 8:
                del self._recent[0]
        else:
            data = encode_message(NON, code, self._next_mid(), m.token, options, payload)
        self._send(data)

    # -- LwM2M operations -----------------------------------------------------------------------------

    def _handle(self, m: CoapMessage) -> tuple[int, list[Option], bytes]:
        segments = m.strings(URI_PATH)
        try:
            path = LwM2mPath.parse("/" + "/".join(segments)) if segments else LwM2mPath()
        except PathError:
            return NOT_FOUND, [], b"not an LwM2M path"
        stats = self.fleet.stats
        observe = m.uint(OBSERVE)
        if m.code == GET:
            if m.uint(ACCEPT) == ContentFormat.LINK:
                stats["discover"] += 1
                return self._discover(path)
            if observe == 0:
                return self._observe(m, (path,), composite=False)
            if observe == 1:
                self._cancel(m.token)
            stats["read"] += 1
            return self._read(m, path)
        if m.code == FETCH:
            cf = m.uint(CONTENT_FORMAT)
            try:
                paths = tuple(decode_paths(cf if cf is not None else ContentFormat.SENML_CBOR, m.payload))
            except CodecError as e:
                return BAD_REQUEST, [], str(e).encode()
            if observe == 0:
                return self._observe(m, paths, composite=True)
            if observe == 1:
                self._cancel(m.token)
            stats["read_composite"] += 1
            return self._read_composite(m, paths)
        if m.code == PUT:
            query = tuple(m.strings(URI_QUERY))
            if query:
                stats["write_attributes"] += 1
                self.attributes[str(path)] = query
                return CHANGED, [], b""
            return self._write(m, path, replace=True)
        if m.code == POST:
            if path.depth == 3:
                if path in EXECUTABLE or (path.object_id == 3303 and path.ids[2] == 5605):
                    return self._execute(path, m.payload)
                return self._write(m, path, replace=False)
            if path.depth == 1:
                return self._create(m, path)
            return self._write(m, path, replace=False)
        if m.code == DELETE:
            return self._delete(path)
        if m.code == IPATCH:
            return self._write_composite(m)
        return METHOD_NOT_ALLOWED, [], b""

    def _encode(self, fmt: int | None, path: LwM2mPath, values: dict[LwM2mPath, Value]) -> tuple[int, bytes]:
        model_of = self.fleet.model_of
        if fmt is None:
            single = len(values) == 1 and path in values
            fmt = ContentFormat.TEXT if single else ContentFormat.TLV
            if single and isinstance(values[path], bytes):
                fmt = ContentFormat.OPAQUE
        node = node_from_values(path, values, model_of)
        return fmt, encode(fmt, node, path, model_of)

    def _read(self, m: CoapMessage, path: LwM2mPath) -> tuple[int, list[Option], bytes]:
        values = self._values_under(path)
        if not values or (path.depth == 0):
            return NOT_FOUND, [], b""
        try:
            fmt, payload = self._encode(m.uint(ACCEPT), path, values)
        except (CodecError, NodeError) as e:
            return NOT_ACCEPTABLE, [], str(e).encode()
        return self._content(m, fmt, payload)

    def _content(
        self, m: CoapMessage, fmt: int, payload: bytes, extra: Iterable[Option] = ()
    ) -> tuple[int, list[Option], bytes]:
        if self.truncate and len(payload) > 2:
            payload = payload[: len(payload) // 2]
        if self.wrong_format:
            fmt = ContentFormat.TLV if fmt != ContentFormat.TLV else ContentFormat.SENML_JSON
        options: list[Option] = [(CONTENT_FORMAT, uint(fmt)), *extra]
        block2 = m.option(BLOCK2)
        szx = 6
        number = 0
        if block2 is not None:
            number, _, szx = parse_block(block2)
            szx = min(szx, 6)
        size = 16 << szx
        if len(payload) > size or block2 is not None:
            start = number * size
            if start >= len(payload) and payload:
                return BAD_REQUEST, [], b"block out of range"
            more = start + size < len(payload)
            options.append((BLOCK2, block_option(number, more, szx)))
            payload = payload[start : start + size]
        return CONTENT, options, payload

    def _discover(self, path: LwM2mPath) -> tuple[int, list[Option], bytes]:
        values = self._values_under(path)
        if not values or path.depth == 0:
            return NOT_FOUND, [], b""
        links = [DiscoveredLink(path, self._attributes_of(path))]
        seen = {path}
        for p in sorted(values):
            for depth in range(path.depth + 1, min(p.depth, 3) + 1):
                prefix = LwM2mPath(*p.ids[:depth])
                if prefix not in seen:
                    seen.add(prefix)
                    links.append(DiscoveredLink(prefix, self._attributes_of(prefix)))
        return CONTENT, [(CONTENT_FORMAT, uint(ContentFormat.LINK))], encode_discover(links)

    def _attributes_of(self, path: LwM2mPath) -> dict[str, str | None]:
        query = self.attributes.get(str(path), ())
        return {name: value or None for name, _, value in (q.partition("=") for q in query)}

    def _observe(
        self, m: CoapMessage, paths: tuple[LwM2mPath, ...], *, composite: bool
    ) -> tuple[int, list[Option], bytes]:
        fleet = self.fleet
        if composite:
            code, options, payload = self._read_composite(m, paths)
        else:
            code, options, payload = self._read(m, paths[0])
        if code != CONTENT:
            return code, options, payload
        fmt = next(int.from_bytes(v, "big") for n, v in options if n == CONTENT_FORMAT)
        obs = _Observation(m.token, paths, fmt, composite)
        old = self.observations.pop(m.token, None)
        if old is not None:
            fleet.timers.cancel(old.timer)
        self.observations[m.token] = obs
        fleet.stats["observe"] += 1
        fleet.observations += 1
        if fleet.notify_interval:
            first = fleet.loop.time() + random.uniform(0.1, 1.0) * fleet.notify_interval
            obs.timer = fleet.timers.call_at(first, SimClient._notify_tick, (self, obs))
        fleet.changed()
        return code, [*options, (OBSERVE, uint(obs.seq))], payload

    def _cancel(self, token: bytes) -> None:
        obs = self.observations.pop(token, None)
        if obs is not None:
            self.fleet.timers.cancel(obs.timer)
            self.fleet.observations -= 1
            self.fleet.stats["observe_cancelled"] += 1

    @staticmethod
    def _notify_tick(arg: tuple[SimClient, _Observation]) -> None:
        client, obs = arg
        obs.timer = None
        if client.observations.get(obs.token) is not obs or not client.registered:
            return
        fleet = client.fleet
        client.step()
        client.notify(obs)
        if fleet.notify_interval:
            obs.timer = fleet.timers.call_at(fleet.loop.time() + fleet.notify_interval, SimClient._notify_tick, arg)

    def notify(self, obs: _Observation | None = None, *, confirmable: bool | None = None) -> None:
        """Send a notification now (every observation if ``obs`` is None)."""
        targets = list(self.observations.values()) if obs is None else [obs]
        fleet = self.fleet
        con = fleet.confirmable_notifications if confirmable is None else confirmable
        for target in targets:
            target.seq = (target.seq + 1) & 0xFFFFFF
            try:
                if target.composite:
                    values = {p: v for path in target.paths for p, v in self._values_under(path).items()}
                    payload = encode(target.fmt, values, None, fleet.model_of)
                else:
                    path = target.paths[0]
                    value = self._value(path)
                    if target.fmt == ContentFormat.TEXT and value is not None:  # the common case, quickly
                        kind = type(value)
                        if kind is float:
                            payload = repr(value).encode()
                        elif kind is int:
                            payload = str(value).encode()
                        else:
                            payload = format_text_value(value, infer_type(value), path).encode()
                    else:
                        _, payload = self._encode(target.fmt, path, self._values_under(path))
            except (CodecError, NodeError):
                continue
            mid = self._next_mid()
            data = _notification_bytes(con, mid, target.token, target.seq, target.fmt, payload)
            if con:
                out = _Outgoing(mid, target.token, data, None)
                self.outgoing[mid] = out
                out.timer = fleet.timers.call_at(fleet.loop.time() + out.timeout, self._retransmit, out)
            else:
                self._non_sent[mid] = target.token
                if len(self._non_sent) > 16:
                    del self._non_sent[next(iter(self._non_sent))]
            fleet.stats["notifications"] += 1
            self._send(data)

    def _read_composite(self, m: CoapMessage, paths: tuple[LwM2mPath, ...]) -> tuple[int, list[Option], bytes]:
        values: dict[LwM2mPath, Value] = {}
        for path in paths:
            values.update(self._values_under(path))
        fmt = m.uint(ACCEPT) or ContentFormat.SENML_CBOR
        try:
            payload = encode(fmt, values, None, self.fleet.model_of)
        except CodecError as e:
            return NOT_ACCEPTABLE, [], str(e).encode()
        return self._content(m, fmt, payload)

    def _write(self, m: CoapMessage, path: LwM2mPath, *, replace: bool) -> tuple[int, list[Option], bytes]:
        payload = self._assemble(m)
        if isinstance(payload, tuple):
            return payload
        cf = m.uint(CONTENT_FORMAT)
        if cf is None:
            return BAD_REQUEST, [], b"no Content-Format"
        model_of = self.fleet.model_of
        try:
            node = decode(cf, payload, path, model_of)
        except CodecError as e:
            return BAD_REQUEST if ContentFormat.known(cf) else UNSUPPORTED_CONTENT_FORMAT, [], str(e).encode()
        values = {p: v for p, v, _ in iter_leaves(node, path)}
        denied = self._not_writable(values)
        if denied:
            return METHOD_NOT_ALLOWED, [], f"{denied} is not writable".encode()
        self._apply(values)
        self.fleet.stats["write"] += 1
        return CHANGED, self._block1_echo(m), b""

    def _assemble(self, m: CoapMessage) -> bytes | tuple[int, list[Option], bytes]:
        block1 = m.option(BLOCK1)
        if block1 is None:
            return m.payload
        number, more, szx = parse_block(block1)
        key = "/".join(m.strings(URI_PATH))
        if number == 0:
            self._block1 = (key, bytearray())
        if self._block1 is None or self._block1[0] != key or len(self._block1[1]) != number * (16 << szx):
            return REQUEST_ENTITY_INCOMPLETE, [], b""
        self._block1[1].extend(m.payload)
        if more:
            return CONTINUE, [(BLOCK1, block1)], b""
        body = bytes(self._block1[1])
        self._block1 = None
        return body

    @staticmethod
    def _block1_echo(m: CoapMessage) -> list[Option]:
        block1 = m.option(BLOCK1)
        return [] if block1 is None else [(BLOCK1, block1)]

    def _not_writable(self, values: dict[LwM2mPath, Value]) -> LwM2mPath | None:
        model_of = self.fleet.model_of
        for p in values:
            model = model_of(p.ids[0])
            rmodel = None if model is None or p.depth < 3 else model.resources.get(p.ids[2])
            if rmodel is not None and not rmodel.operations & Operations.W:
                return p
        return None

    def _apply(self, values: dict[LwM2mPath, Value]) -> None:
        overrides = self.overrides
        if overrides is None:
            overrides = self.overrides = {}
        for p, v in values.items():
            self.writes.append(p)
            if p == LIFETIME and isinstance(v, int):
                self.lifetime = v
                self.fleet.loop.call_soon(self._lifetime_changed)
                continue
            if p == TEMPERATURE and isinstance(v, float | int):
                self.temperature = float(v)
                continue
            overrides[p] = v

    def _lifetime_changed(self) -> None:
        if self.registered:
            self.update(lifetime=self.lifetime)

    def _write_composite(self, m: CoapMessage) -> tuple[int, list[Option], bytes]:
        cf = m.uint(CONTENT_FORMAT)
        if cf is None:
            return BAD_REQUEST, [], b"no Content-Format"
        try:
            values = decode(cf, m.payload, None, self.fleet.model_of)
        except CodecError as e:
            return BAD_REQUEST, [], str(e).encode()
        denied = self._not_writable(values)
        if denied:
            return METHOD_NOT_ALLOWED, [], f"{denied} is not writable".encode()
        self._apply(values)
        self.fleet.stats["write_composite"] += 1
        return CHANGED, [], b""

    def _execute(self, path: LwM2mPath, arguments: bytes) -> tuple[int, list[Option], bytes]:
        self.executions.append((str(path), arguments))
        self.fleet.stats["execute"] += 1
        if path == UPDATE_TRIGGER:
            self.fleet.loop.call_soon(self.update)
        return CHANGED, [], b""

    def _create(self, m: CoapMessage, path: LwM2mPath) -> tuple[int, list[Option], bytes]:
        if path.object_id != 3303:
            return METHOD_NOT_ALLOWED, [], b"only object 3303 takes new instances here"
        cf = m.uint(CONTENT_FORMAT)
        if cf is None:
            return BAD_REQUEST, [], b"no Content-Format"
        try:
            node = decode(cf, m.payload, path, self.fleet.model_of)
        except CodecError as e:
            return BAD_REQUEST, [], str(e).encode()
        instances = getattr(node, "instances", None)
        if isinstance(instances, dict) and instances:
            iid = next(iter(instances))
            instance = instances[iid]
        elif isinstance(node, ObjectInstanceNode):
            iid, instance = node.id, node
        else:
            return BAD_REQUEST, [], b"no instance in the payload"
        if iid in self.instances:
            return BAD_REQUEST, [], b"instance exists"
        self.instances.add(iid)
        values = {p: v for p, v, _ in iter_leaves(instance, path.child(iid))}
        self._apply(values)
        self.fleet.stats["create"] += 1
        return CREATED, [(LOCATION_PATH, b"3303"), (LOCATION_PATH, str(iid).encode())], b""

    def _delete(self, path: LwM2mPath) -> tuple[int, list[Option], bytes]:
        if path.depth != 2 or path.object_id != 3303 or path.instance_id not in self.instances:
            return METHOD_NOT_ALLOWED if path.depth != 2 else NOT_FOUND, [], b""
        self.instances.discard(path.ids[1])
        self.fleet.stats["delete"] += 1
        return DELETED, [], b""


def code_500(error: Exception) -> tuple[int, list[Option], bytes]:
    return code(5, 0), [], f"simulator error: {error!r}"[:200].encode()


class _Stats(dict[str, int]):
    def __missing__(self, key: str) -> int:
        return 0


class Fleet:
    """N simulated clients in this process, one UDP socket each, one timer heap for all of them."""

    def __init__(
        self,
        server: tuple[str, int],
        count: int,
        *,
        prefix: str = "sim-",
        start_index: int = 0,
        lifetime: int = 300,
        lwm2m_version: str = "1.1",
        binding: str = "U",
        queue_mode: bool = False,
        content_formats: tuple[ContentFormat, ...] = _DEFAULT_FORMATS,
        notify_interval: float | None = None,
        confirmable_notifications: bool = False,
        update_interval: float | None = None,
        blob: bytes | None = None,
        bind_host: str | None = None,
        links: Sequence[ByteLink] | None = None,
    ) -> None:
        self.server = server
        self.count = count
        self.prefix = prefix
        self.start_index = start_index
        self.lifetime = lifetime
        self.lwm2m_version = lwm2m_version
        self.binding = binding
        self.queue_mode = queue_mode
        self.content_formats = content_formats
        self.notify_interval = notify_interval
        self.confirmable_notifications = confirmable_notifications
        self.update_interval = update_interval
        self.blob = blob
        self.bind_host = bind_host
        #: Serial ports instead of UDP sockets: one client per link, CoAP in slipmux frames (``count``
        #: and ``server`` are then unused; register with ``binding="N"``): see gateway.sim.serial_link.
        self.links = links
        self.models = ModelRegistry()
        self.model_of: ModelLookup = self.models.model_of
        self.clients: list[SimClient] = []
        self._by_endpoint: dict[str, SimClient] = {}
        self.registered = 0
        self.observations = 0
        self.stats: _Stats = _Stats()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: TimerQueue | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Fleet.start() first"
        return self._loop

    @property
    def timers(self) -> TimerQueue:
        assert self._timers is not None, "Fleet.start() first"
        return self._timers

    async def start(self) -> None:
        """Open every client's socket (nothing is sent yet)."""
        loop = self._loop = asyncio.get_running_loop()
        self._timers = TimerQueue(loop)
        if self.links is not None:
            for i, link in enumerate(self.links, self.start_index):
                datagrams = SlipmuxDatagrams(link)
                client = SimClient(self, f"{self.prefix}{i:06d}", datagrams)
                self.clients.append(client)
                self._by_endpoint[client.endpoint] = client
                datagrams.start(client.readable)
            return
        host, port = self.server
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        bind_host = self.bind_host or ("::1" if family == socket.AF_INET6 else "127.0.0.1")
        for i in range(self.start_index, self.start_index + self.count):
            sock = udp_client_socket(family, sockaddr, bind_host)
            client = SimClient(self, f"{self.prefix}{i:06d}", sock)
            self.clients.append(client)
            self._by_endpoint[client.endpoint] = client
            loop.add_reader(sock.fileno(), client.readable)

    def client(self, endpoint: str) -> SimClient:
        return self._by_endpoint[endpoint]

    def register_all(self, rate: float | None = None) -> None:
        """Every client registers: at once, or ``rate`` per second."""
        if rate is None:
            for client in self.clients:
                client.register()
            return
        now = self.loop.time()
        for n, client in enumerate(self.clients):
            self.timers.call_at(now + n / rate, SimClient.register, client)

    async def register_and_wait(self, timeout: float = 30.0) -> None:
        """Register every client and wait until all are registered (TimeoutError otherwise)."""
        self.register_all()
        await self.until(lambda: self.registered == len(self.clients), timeout)

    def start_notifications(self, interval: float) -> None:
        """From now on every observation notifies each ``interval`` seconds (spread over the first one)."""
        self.notify_interval = interval
        now = self.loop.time()
        for client in self.clients:
            for obs in client.observations.values():
                self.timers.cancel(obs.timer)
                obs.timer = self.timers.call_at(
                    now + random.uniform(0.0, interval), SimClient._notify_tick, (client, obs)
                )

    def deregister_all(self) -> None:
        for client in self.clients:
            client.deregister()

    def changed(self) -> None:
        """Something counted changed: wake the waiters whose condition now holds."""
        if not self._waiters:
            return
        still = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever a counter changes); TimeoutError after ``timeout``."""
        if predicate():
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        loop = self.loop
        for client in self.clients:
            with contextlib.suppress(Exception):
                loop.remove_reader(client.sock.fileno())
            client.sock.close()
        self.clients.clear()
        self._by_endpoint.clear()
        self.timers.close()


def udp_client_socket(family: int, sockaddr: Any, bind_host: str) -> socket.socket:
    """A non-blocking UDP socket of its own port, connected to the server: one simulated device."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((bind_host, 0))
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


# -- command line --------------------------------------------------------------------------------------


def _raise_open_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _run(args: argparse.Namespace) -> None:
    host, _, port = (args.server or ":0").rpartition(":")
    links = serial_links(args.serial, baudrate=args.baudrate) if args.serial else None
    fleet = Fleet(
        (host.strip("[]"), int(port)),
        len(args.serial) if args.serial else args.count,
        prefix=args.prefix,
        lifetime=args.lifetime,
        lwm2m_version=args.lwm2m_version,
        binding=args.binding,
        queue_mode=args.queue,
        notify_interval=None if args.wait_notify else args.notify_interval,
        confirmable_notifications=args.confirmable,
        links=links,
    )
    await fleet.start()
    print(json.dumps({"event": "ready", "clients": len(fleet.clients)}), flush=True)
    loop = asyncio.get_running_loop()
    if args.wait_go:  # a benchmark releases every process at once
        await loop.run_in_executor(None, sys.stdin.readline)
    if args.wait_notify and args.notify_interval:

        async def notify_later() -> None:
            await loop.run_in_executor(None, sys.stdin.readline)
            fleet.start_notifications(args.notify_interval)

        notifier = asyncio.ensure_future(notify_later())
        notifier.add_done_callback(lambda _: None)
    started = time.monotonic()
    fleet.register_all(args.register_rate)
    end = started + args.duration if args.duration else math.inf
    try:
        while time.monotonic() < end:
            await asyncio.sleep(args.stats_interval)
            line = {"event": "stats", "t": round(time.monotonic() - started, 3), "registered": fleet.registered,
                    "observations": fleet.observations, "cpu_s": round(time.process_time(), 2), **fleet.stats}
            print(json.dumps(line), flush=True)
    finally:
        if args.deregister:
            fleet.deregister_all()
            await asyncio.sleep(0.5)
        await fleet.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulate a fleet of NoSec LwM2M clients (objects 1, 3, 3303).")
    parser.add_argument("--server", help="host:port of the LwM2M server (CoAP/UDP)")
    parser.add_argument(
        "--serial", action="append", default=[], metavar="PORT",
        help="instead of --server: one client per serial port, CoAP in slipmux frames (repeatable; use --binding N)",
    )  # fmt: skip
    parser.add_argument("--baudrate", type=int, default=115200, help="line speed of the --serial ports")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--prefix", default="sim-", help="endpoint names are PREFIX000000, PREFIX000001, ...")
    parser.add_argument("--lifetime", type=int, default=300)
    parser.add_argument("--lwm2m-version", default="1.1")
    parser.add_argument("--binding", default="U")
    parser.add_argument("--queue", action="store_true", help="register in queue mode (Q)")
    parser.add_argument(
        "--notify-interval", type=float, default=None, help="seconds between notifications of one observation"
    )
    parser.add_argument("--confirmable", action="store_true", help="send notifications as CON")
    parser.add_argument(
        "--register-rate", type=float, default=None, help="registrations per second (default: all at once)"
    )
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: until interrupted)")
    parser.add_argument("--stats-interval", type=float, default=1.0)
    parser.add_argument("--deregister", action="store_true", help="de-register every client at the end")
    parser.add_argument("--wait-go", action="store_true", help="register only after a line on stdin")
    parser.add_argument(
        "--wait-notify", action="store_true", help="start notifying only after a (further) line on stdin"
    )
    args = parser.parse_args(argv)
    if not args.server and not args.serial:
        parser.error("one of --server or --serial is required")
    _raise_open_file_limit(args.count + 64)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Fleet", "SimClient", "decode_message", "encode_message", "main"]
