"""Slipmux framing (draft-bormann-t2trg-slipmux): CoAP, diagnostics and IP packets on one serial line.

Pure code, no I/O: the encoder turns a CoAP message, a diagnostic text or an IP packet into the
bytes to write; :class:`SlipmuxDecoder` takes whatever the port delivered, in pieces of any size,
and hands back the complete frames it found. A device's misbehaviour (bad FCS, line noise, broken
escapes, oversized or unknown frames) never raises: the frame is dropped and counted.

Wire format (RFC 1055 SLIP): every frame is sent between two END bytes; a data END is sent as
ESC ESC_END and a data ESC as ESC ESC_ESC. The first unescaped byte says what the frame is::

    0A        diagnostic: UTF-8 text, device -> host, no FCS
    45..4F    IPv4 packet (the byte is the packet's first byte), no FCS
    60..6F    IPv6 packet (likewise), no FCS
    A9        configuration: A9 | CoAP message (RFC 7252 UDP format) | FCS-16, LSB first

>>> encode_configuration(bytes.fromhex("40010000")).hex(" ")
'c0 a9 40 01 00 00 bc 38 c0'
>>> SlipmuxDecoder().feed(bytes.fromhex("c0a940010000bc38c0"))
[ConfigurationFrame(coap=b'@\\x01\\x00\\x00')]

Caveats: a configuration frame must hold at least a 4-byte CoAP header; anything shorter is
counted as ``too_short``, and the encoder refuses to produce one. Frames that arrive before the
first END are line noise (the decoder cannot know where they started) and are only counted.
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

# --- SLIP (RFC 1055) -------------------------------------------------------------------------------

END: Final = 0xC0
ESC: Final = 0xDB
ESC_END: Final = 0xDC
ESC_ESC: Final = 0xDD

_END = bytes([END])
_ESC = bytes([ESC])
_ESCAPED_END = bytes([ESC, ESC_END])
_ESCAPED_ESC = bytes([ESC, ESC_ESC])


class FrameType(enum.IntEnum):
    """First byte of an unescaped slipmux frame (the IP types are ranges, see :func:`frame_kind`)."""

    DIAGNOSTIC = 0x0A
    CONFIGURATION = 0xA9


IPV4_FIRST: Final = range(0x45, 0x4F + 1)  # version 4, IHL 5..15: 4F is an IPv4 packet
IPV6_FIRST: Final = range(0x60, 0x6F + 1)  # version 6, any traffic-class nibble: 6F too

# --- FCS-16 (RFC 1662, CRC-16/X.25) ----------------------------------------------------------------

FCS16_INIT: Final = 0xFFFF
#: Running FCS after a frame *and its own FCS* went through :func:`fcs16`: the frame is intact.
FCS16_GOOD: Final = 0xF0B8
# The CRC is RFC 1662's reflected polynomial 0x8408 (0x1021 bit-reversed), computed LSB first.
# Bit-reversal tables let binascii's CRC-CCITT (0x1021, MSB first, in C) compute it.
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_REV16 = list(_REV8)


def fcs16(data: bytes, fcs: int = FCS16_INIT) -> int:
    """Run ``data`` through the FCS-16 register starting from ``fcs``; return the new register.

    This is RFC 1662's ``pppfcs16``: no final complement, so calls chain
    (``fcs16(b, fcs16(a)) == fcs16(a + b)``). The value a sender appends is the complement,
    :func:`frame_check_sequence`; a receiver running a whole frame including its FCS through
    this function gets :data:`FCS16_GOOD`.

    >>> hex(fcs16(b"\\xa9"))
    '0x374c'
    """
    # The reflected CRC over ``data`` equals the bit-reversed non-reflected CRC (binascii's C
    # implementation of CRC-CCITT) over bit-reversed bytes: about 7x faster than a Python loop.
    reg = _REV16[fcs >> 8] | (_REV16[fcs & 0xFF] << 8)
    reg = binascii.crc_hqx(data.translate(_REV8), reg)
    return _REV16[reg >> 8] | (_REV16[reg & 0xFF] << 8)


def frame_check_sequence(data: bytes) -> int:
    """The CRC-16/X.25 of ``data``: the FCS a sender appends, least-significant byte first.

    >>> hex(frame_check_sequence(b"123456789"))
    '0x906e'
    """
    return fcs16(data) ^ 0xFFFF


# --- Frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigurationFrame:
    """A CoAP message (RFC 7252 UDP format) whose FCS checked out."""

    coap: bytes


@dataclass(frozen=True, slots=True)
class DiagnosticFrame:
    """Diagnostic text from the device; bytes that were not UTF-8 are replaced with U+FFFD."""

    text: str


@dataclass(frozen=True, slots=True)
class IpFrame:
    """An IPv4 or IPv6 packet, first byte included; slipmux adds no FCS to these."""

    packet: bytes


Frame: TypeAlias = ConfigurationFrame | DiagnosticFrame | IpFrame


class FrameEncodingError(ValueError):
    """The caller asked for a frame that a slipmux receiver would not accept (a local error)."""


# --- Encoding --------------------------------------------------------------------------------------

#: Type byte plus FCS: what a configuration frame adds to its CoAP message.
FRAME_OVERHEAD: Final = 3
#: The smallest CoAP message: the 4-byte header.
COAP_HEADER_SIZE: Final = 4


def _slip(frame: bytes) -> bytes:
    # ESC first: escaping END afterwards adds ESC bytes that must not be escaped again.
    return _END + frame.replace(_ESC, _ESCAPED_ESC).replace(_END, _ESCAPED_END) + _END


def encode_configuration(coap: bytes) -> bytes:
    """The wire bytes of a configuration frame carrying the CoAP message ``coap``.

    Raises :class:`FrameEncodingError` if ``coap`` is shorter than a CoAP header.

    >>> encode_configuration(bytes.fromhex("4001c0db")).hex(" ")
    'c0 a9 40 01 db dc db dd 48 9a c0'
    """
    if len(coap) < COAP_HEADER_SIZE:
        raise FrameEncodingError(f"a CoAP message has at least {COAP_HEADER_SIZE} bytes, got {len(coap)}")
    body = bytes([FrameType.CONFIGURATION]) + coap
    return _slip(body + frame_check_sequence(body).to_bytes(2, "little"))


def encode_diagnostic(text: str) -> bytes:
    """The wire bytes of a diagnostic frame carrying ``text`` (UTF-8, no FCS).

    Lone surrogates, which UTF-8 cannot carry, are sent as ``?``.
    """
    return _slip(bytes([FrameType.DIAGNOSTIC]) + text.encode("utf-8", errors="replace"))


def encode_ip(packet: bytes) -> bytes:
    """The wire bytes of an IP frame; the packet's own first byte is the frame type.

    Raises :class:`FrameEncodingError` if the packet does not start like IPv4 (45..4F) or
    IPv6 (60..6F): a receiver would not take it for an IP packet.
    """
    if not packet or (packet[0] not in IPV4_FIRST and packet[0] not in IPV6_FIRST):
        first = f"{packet[0]:02X}" if packet else "nothing"
        raise FrameEncodingError(f"an IP packet starts with 45..4F or 60..6F, this one with {first}")
    return _slip(packet)


# --- Decoding --------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    CONFIGURATION = enum.auto()
    DIAGNOSTIC = enum.auto()
    IP = enum.auto()
    UNKNOWN = enum.auto()


def _kind_table() -> tuple[_Kind, ...]:
    table = [_Kind.UNKNOWN] * 256
    table[FrameType.CONFIGURATION] = _Kind.CONFIGURATION
    table[FrameType.DIAGNOSTIC] = _Kind.DIAGNOSTIC
    for first in (*IPV4_FIRST, *IPV6_FIRST):
        table[first] = _Kind.IP
    return tuple(table)


_KIND_BY_FIRST_BYTE: Final = _kind_table()

#: The largest CoAP message, diagnostic text or IP packet the decoder accepts by default.
DEFAULT_MAX_MESSAGE_SIZE: Final = 2048

_MIN_CONFIGURATION_FRAME: Final = 1 + COAP_HEADER_SIZE + 2


class SlipmuxDecoder:
    """Incremental slipmux receiver for one serial line: bytes in, frames out.

    :meth:`feed` accepts the bytes in pieces of any size; the frames it returns do not depend on
    where the pieces were cut. Nothing a device sends makes it raise; dropped frames are counted:

    ``frames_ok``      frames returned (of every type)
    ``ip_frames``      of those, IP packets (the gateway may have no use for them)
    ``bad_fcs``        configuration frames whose FCS did not check out
    ``too_short``      configuration frames shorter than A9 + CoAP header + FCS
    ``aborted``        frames cut off by ESC END
    ``bad_escape``     frames with ESC followed by anything but ESC_END, ESC_ESC or END
    ``unknown_type``   frames whose first byte is no slipmux type
    ``oversized``      frames longer than ``max_message_size`` + 3; skipped up to the next END
    ``noise_bytes``    bytes before the first END (the start of a frame that cannot be trusted)

    Empty frames (END END) are the normal separator and are not counted.
    """

    __slots__ = (
        "_carry",
        "_discarding",
        "_max_escaped",
        "_synced",
        "aborted",
        "bad_escape",
        "bad_fcs",
        "frames_ok",
        "ip_frames",
        "max_frame_size",
        "noise_bytes",
        "oversized",
        "too_short",
        "unknown_type",
    )

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < COAP_HEADER_SIZE:
            raise ValueError(f"max_message_size must be at least {COAP_HEADER_SIZE}, got {max_message_size}")
        #: Longest unescaped frame accepted, type byte and FCS included.
        self.max_frame_size = max_message_size + FRAME_OVERHEAD
        # An escaped frame is at most twice as long as the frame; one byte more may be an
        # unfinished escape. Anything longer is oversized whatever follows it.
        self._max_escaped = 2 * self.max_frame_size + 1
        self._carry = bytearray()
        self._synced = False
        self._discarding = False
        self.frames_ok = 0
        self.ip_frames = 0
        self.bad_fcs = 0
        self.too_short = 0
        self.aborted = 0
        self.bad_escape = 0
        self.unknown_type = 0
        self.oversized = 0
        self.noise_bytes = 0

    def reset(self) -> None:
        """Forget any partial frame and wait for the next END, as after opening the port.

        Counters are kept.
        """
        self._carry.clear()
        self._synced = False
        self._discarding = False

    def counters(self) -> dict[str, int]:
        """A snapshot of the counters, by name."""
        return {
            "frames_ok": self.frames_ok,
            "ip_frames": self.ip_frames,
            "bad_fcs": self.bad_fcs,
            "too_short": self.too_short,
            "aborted": self.aborted,
            "bad_escape": self.bad_escape,
            "unknown_type": self.unknown_type,
            "oversized": self.oversized,
            "noise_bytes": self.noise_bytes,
        }

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes received; return the frames they completed, in order."""
        frames: list[Frame] = []
        if not self._synced:
            start = data.find(END)
            if start < 0:
                self.noise_bytes += len(data)
                return frames
            self.noise_bytes += start
            self._synced = True
            data = data[start + 1 :]

        first_end = data.find(END)
        if first_end < 0:
            # Still inside one frame: keep its bytes (amortised appends, no re-copying).
            if not self._discarding:
                self._carry += data
                self._check_carry()
            return frames

        if self._discarding:
            # The rest of an oversized frame, already counted.
            self._discarding = False
            data = data[first_end + 1 :]
        elif self._carry:
            self._carry += data
            data = bytes(self._carry)
            self._carry.clear()

        parts = data.split(_END)
        tail = parts.pop()
        for part in parts:
            if part:
                self._decode(part, frames)
        self._carry += tail
        self._check_carry()
        return frames

    def _check_carry(self) -> None:
        if len(self._carry) > self._max_escaped:
            self.oversized += 1
            self._carry.clear()
            self._discarding = True

    def _decode(self, part: bytes, frames: list[Frame]) -> None:
        """Unescape and classify one frame's bytes (between two ENDs, not empty)."""
        if len(part) > self._max_escaped:
            self.oversized += 1
            return
        escapes = part.count(ESC)
        if escapes:
            # Counting is enough to validate: an ESC pair can only start at a real escape,
            # because ESC never follows an ESC in a valid stream. Each unpaired ESC is an error;
            # a single one at the very end was followed by END: an abort.
            unpaired = escapes - part.count(_ESCAPED_END) - part.count(_ESCAPED_ESC)
            if unpaired:
                if unpaired == 1 and part[-1] == ESC:
                    self.aborted += 1
                else:
                    self.bad_escape += 1
                return
            if len(part) - escapes > self.max_frame_size:
                self.oversized += 1
                return
            # ESC_END first: a data ESC (ESC ESC_ESC) followed by a data DC must stay ESC DC.
            part = part.replace(_ESCAPED_END, _END).replace(_ESCAPED_ESC, _ESC)
        elif len(part) > self.max_frame_size:
            self.oversized += 1
            return

        kind = _KIND_BY_FIRST_BYTE[part[0]]
        if kind is _Kind.CONFIGURATION:
            if len(part) < _MIN_CONFIGURATION_FRAME:
                self.too_short += 1
            elif fcs16(part) != FCS16_GOOD:
                self.bad_fcs += 1
            else:
                self.frames_ok += 1
                frames.append(ConfigurationFrame(part[1:-2]))
        elif kind is _Kind.IP:
            self.frames_ok += 1
            self.ip_frames += 1
            frames.append(IpFrame(part))
        elif kind is _Kind.DIAGNOSTIC:
            self.frames_ok += 1
            frames.append(DiagnosticFrame(part[1:].decode("utf-8", errors="replace")))
        else:
            self.unknown_type += 1
