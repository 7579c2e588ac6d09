"""Slipmux framer: wire vectors both ways, counters for every kind of bad frame, round trips,
split-independence and fuzzing (any input decodes or is counted, never raises)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.slipmux_frames import (
    FCS16_GOOD,
    FCS16_INIT,
    ConfigurationFrame,
    DiagnosticFrame,
    Frame,
    FrameEncodingError,
    IpFrame,
    SlipmuxDecoder,
    encode_configuration,
    encode_diagnostic,
    encode_ip,
    fcs16,
    frame_check_sequence,
)

H = bytes.fromhex


def decode_all(data: bytes, **kwargs: int) -> tuple[list[Frame], dict[str, int]]:
    decoder = SlipmuxDecoder(**kwargs)
    frames = decoder.feed(data)
    return frames, decoder.counters()


def decode_in_pieces(pieces: list[bytes], **kwargs: int) -> tuple[list[Frame], dict[str, int]]:
    decoder = SlipmuxDecoder(**kwargs)
    frames: list[Frame] = []
    for piece in pieces:
        frames += decoder.feed(piece)
    return frames, decoder.counters()


def only(counters: dict[str, int], **expected: int) -> None:
    """Every counter is zero except the ones named."""
    assert counters == {name: expected.get(name, 0) for name in counters}


# --- FCS-16 ----------------------------------------------------------------------------------------


def bitwise_fcs16(data: bytes, fcs: int = 0xFFFF) -> int:
    """RFC 1662's definition, one bit at a time: the reference for the fast implementation."""
    for byte in data:
        fcs ^= byte
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    return fcs


def test_fcs_check_value() -> None:
    assert frame_check_sequence(b"123456789") == 0x906E
    assert fcs16(b"123456789") ^ 0xFFFF == 0x906E


def test_fcs_of_00_01_02_03_sent_lsb_first() -> None:
    assert frame_check_sequence(H("00010203")) == 0xA729
    assert frame_check_sequence(H("00010203")).to_bytes(2, "little") == H("29A7")


def test_fcs_state_after_a9() -> None:
    # LWM2M_FACTS "FCS state": the register after A9, before the final complement.
    assert fcs16(H("A9")) == 0x374C
    assert fcs16(H("A9"), FCS16_INIT) == 0x374C


def test_fcs_chains() -> None:
    assert fcs16(b"456789", fcs16(b"123")) == fcs16(b"123456789")
    assert fcs16(b"") == FCS16_INIT


def test_fcs_receiver_residue() -> None:
    frame = H("A940010000")
    assert fcs16(frame + frame_check_sequence(frame).to_bytes(2, "little")) == FCS16_GOOD == 0xF0B8


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_fcs_table_matches_bitwise_definition(data: bytes, start: int) -> None:
    assert fcs16(data, start) == bitwise_fcs16(data, start)


# --- Wire vectors (LWM2M_FACTS.md section 1), both directions ----------------------------------

CONFIGURATION_VECTORS = {
    "empty-con-get": ("40 01 00 00", "C0 A9 40 01 00 00 BC 38 C0"),
    "get-3-0": ("41 01 12 34 42 B1 33 01 30", "C0 A9 41 01 12 34 42 B1 33 01 30 06 BC C0"),
    "escaping": ("40 01 C0 DB", "C0 A9 40 01 DB DC DB DD 48 9A C0"),
    "well-known-core": (
        "40 01 00 01 BB" + b".well-known".hex() + "04" + b"core".hex(),
        "C0 A9 40 01 00 01 BB 2E 77 65 6C 6C 2D 6B 6E 6F 77 6E 04 63 6F 72 65 DC F0 C0",
    ),
}
vectors = pytest.mark.parametrize(("coap", "wire"), CONFIGURATION_VECTORS.values(), ids=CONFIGURATION_VECTORS.keys())


@vectors
def test_configuration_vector_encodes(coap: str, wire: str) -> None:
    assert encode_configuration(H(coap)) == H(wire)


@vectors
def test_configuration_vector_decodes(coap: str, wire: str) -> None:
    frames, counters = decode_all(H(wire))
    assert frames == [ConfigurationFrame(H(coap))]
    only(counters, frames_ok=1)


DIAGNOSTIC_WIRE = H("C0 0A 48 65 6C 6C 6F 20 57 6F 72 6C 64 21 C0")


def test_diagnostic_vector_encodes() -> None:
    assert encode_diagnostic("Hello World!") == DIAGNOSTIC_WIRE


def test_diagnostic_vector_decodes() -> None:
    frames, counters = decode_all(DIAGNOSTIC_WIRE)
    assert frames == [DiagnosticFrame("Hello World!")]
    only(counters, frames_ok=1)


def test_all_vectors_in_one_stream() -> None:
    stream = b"".join(H(wire) for _, wire in CONFIGURATION_VECTORS.values()) + DIAGNOSTIC_WIRE
    frames, _ = decode_all(stream)
    assert frames == [
        *(ConfigurationFrame(H(coap)) for coap, _ in CONFIGURATION_VECTORS.values()),
        DiagnosticFrame("Hello World!"),
    ]


# --- Frame types -------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [0x45, 0x46, 0x4E, 0x4F, 0x60, 0x61, 0x6E, 0x6F])
def test_ip_first_bytes_inclusive(first: int) -> None:
    packet = bytes([first]) + bytes(range(40))
    wire = encode_ip(packet)
    frames, counters = decode_all(wire)
    assert frames == [IpFrame(packet)]
    only(counters, frames_ok=1, ip_frames=1)


@pytest.mark.parametrize("first", [0x00, 0x0B, 0x40, 0x44, 0x50, 0x5F, 0x70, 0xA8, 0xAA, 0xFF])
def test_unknown_first_byte_is_counted(first: int) -> None:
    frames, counters = decode_all(bytes([0xC0, first, 1, 2, 3, 4, 5, 6, 0xC0]))
    assert frames == []
    only(counters, unknown_type=1)


@pytest.mark.parametrize("first", [0x44, 0x50, 0x5F, 0x70, 0x0A, 0xA9])
def test_encode_ip_refuses_non_ip(first: int) -> None:
    with pytest.raises(FrameEncodingError):
        encode_ip(bytes([first, 0, 0, 0]))


def test_encode_ip_refuses_empty() -> None:
    with pytest.raises(FrameEncodingError):
        encode_ip(b"")


@pytest.mark.parametrize("coap", [b"", b"\x40", b"\x40\x01\x00"])
def test_encode_configuration_refuses_less_than_a_header(coap: bytes) -> None:
    with pytest.raises(FrameEncodingError):
        encode_configuration(coap)


def test_diagnostic_invalid_utf8_is_replaced() -> None:
    frames, counters = decode_all(H("C0 0A FF FE 41 C3 C0"))
    assert frames == [DiagnosticFrame("\ufffd\ufffdA\ufffd")]
    only(counters, frames_ok=1)


def test_empty_diagnostic() -> None:
    assert decode_all(H("C0 0A C0"))[0] == [DiagnosticFrame("")]


def test_diagnostic_with_lone_surrogate_is_sent_replaced() -> None:
    assert decode_all(encode_diagnostic("a\ud800b"))[0] == [DiagnosticFrame("a?b")]


# --- Bad frames are dropped and counted, the next frame still decodes -------------------------

GOOD = H("C0 A9 40 01 00 00 BC 38 C0")
GOOD_FRAME = ConfigurationFrame(H("40 01 00 00"))


@pytest.mark.parametrize(
    ("wire", "counter"),
    [
        pytest.param("C0 A9 40 01 00 00 BC 39 C0", "bad_fcs", id="fcs-flipped"),
        pytest.param("C0 A9 40 01 00 01 BC 38 C0", "bad_fcs", id="payload-flipped"),
        pytest.param("C0 A9 40 01 00 00 BC 38 DB C0", "aborted", id="abort-at-end"),
        pytest.param("C0 A9 40 DB C0", "aborted", id="abort-early"),
        pytest.param("C0 DB C0", "aborted", id="abort-only"),
        pytest.param("C0 A9 40 01 DB DD DB C0", "aborted", id="abort-after-escaped-esc"),
        pytest.param("C0 A9 40 01 DB 41 00 00 BC 38 C0", "bad_escape", id="esc-then-data"),
        pytest.param("C0 A9 40 01 DB DB DC 00 BC 38 C0", "bad_escape", id="esc-esc-esc_end"),
        pytest.param("C0 A9 40 DB DB C0", "bad_escape", id="esc-esc-then-end"),
        pytest.param("C0 A9 40 01 00 00 BC DB C0", "aborted", id="abort-mid-fcs"),
        pytest.param("C0 A9 C0", "too_short", id="type-only"),
        pytest.param("C0 A9 40 01 00 BC 38 C0", "too_short", id="three-byte-header"),
        pytest.param("C0 99 40 01 00 00 C0", "unknown_type", id="unknown"),
    ],
)
def test_bad_frame_is_counted_and_next_frame_survives(wire: str, counter: str) -> None:
    frames, counters = decode_all(H(wire) + GOOD)
    assert frames == [GOOD_FRAME]
    only(counters, frames_ok=1, **{counter: 1})


def test_empty_frames_are_ignored_silently() -> None:
    frames, counters = decode_all(H("C0 C0 C0") + GOOD + H("C0 C0") + GOOD)
    assert frames == [GOOD_FRAME, GOOD_FRAME]
    only(counters, frames_ok=2)


def test_single_end_between_frames_is_enough() -> None:
    assert decode_all(GOOD + GOOD[1:])[0] == [GOOD_FRAME, GOOD_FRAME]


def test_garbage_before_first_end_is_noise() -> None:
    frames, counters = decode_all(H("41 42 A9 40 01 00 00 BC 38") + GOOD)
    assert frames == [GOOD_FRAME]
    only(counters, frames_ok=1, noise_bytes=9)


def test_noise_without_any_end_is_counted_across_feeds() -> None:
    decoder = SlipmuxDecoder()
    assert decoder.feed(b"abc") == []
    assert decoder.feed(b"de") == []
    assert decoder.feed(GOOD) == [GOOD_FRAME]
    only(decoder.counters(), frames_ok=1, noise_bytes=5)


def test_frame_without_closing_end_waits() -> None:
    decoder = SlipmuxDecoder()
    assert decoder.feed(GOOD[:-1]) == []
    assert decoder.feed(GOOD[-1:]) == [GOOD_FRAME]


def test_reset_drops_partial_frame_and_resynchronises() -> None:
    decoder = SlipmuxDecoder()
    decoder.feed(GOOD[:-3])
    decoder.reset()
    assert decoder.feed(b"xy" + GOOD) == [GOOD_FRAME]
    only(decoder.counters(), frames_ok=1, noise_bytes=2)


# --- Size limit ------------------------------------------------------------------------------------

LIMIT = 64


@pytest.mark.parametrize("content", [b"\x00", b"\xc0", b"\xdb"])
def test_largest_message_is_accepted(content: bytes) -> None:
    coap = content * LIMIT
    frames, counters = decode_all(encode_configuration(coap), max_message_size=LIMIT)
    assert frames == [ConfigurationFrame(coap)]
    only(counters, frames_ok=1)


@pytest.mark.parametrize("content", [b"\x00", b"\xc0", b"\xdb"])
@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_oversized_frame_is_skipped_to_next_end(content: bytes, piece: int) -> None:
    wire = encode_configuration(content * (LIMIT + 1)) + GOOD
    frames, counters = decode_in_pieces(
        [wire[i : i + piece] for i in range(0, len(wire), piece)], max_message_size=LIMIT
    )
    assert frames == [GOOD_FRAME]
    only(counters, frames_ok=1, oversized=1)


@pytest.mark.parametrize("piece", [1, 100, 100_000])
def test_endless_frame_is_counted_once_and_memory_stays_bounded(piece: int) -> None:
    decoder = SlipmuxDecoder(max_message_size=LIMIT)
    frames: list[Frame] = []
    noise = b"\xc0" + b"\x41" * 50_000
    for i in range(0, len(noise), piece):
        frames += decoder.feed(noise[i : i + piece])
        assert len(decoder._carry) <= 2 * (LIMIT + 3) + 1
    frames += decoder.feed(GOOD)
    assert frames == [GOOD_FRAME]
    only(decoder.counters(), frames_ok=1, oversized=1)


def test_oversized_diagnostic_and_ip_are_refused_too() -> None:
    wire = encode_diagnostic("x" * LIMIT) + encode_diagnostic("x" * (LIMIT + 3))
    wire += encode_ip(b"\x45" + bytes(LIMIT + 2)) + encode_ip(b"\x45" + bytes(LIMIT + 3))
    frames, counters = decode_all(wire, max_message_size=LIMIT)
    assert frames == [DiagnosticFrame("x" * LIMIT), IpFrame(b"\x45" + bytes(LIMIT + 2))]
    only(counters, frames_ok=2, ip_frames=1, oversized=2)


def test_max_message_size_must_fit_a_header() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        SlipmuxDecoder(max_message_size=3)


# --- Round trips -----------------------------------------------------------------------------------

# CoAP-like: a real-looking header now and then, but any bytes, END and ESC included.
coap_messages = st.one_of(
    st.binary(min_size=4, max_size=300),
    st.builds(
        lambda head, body: head + body,
        st.sampled_from([H("40 01 00 00"), H("42 45 C0 DB 12 34"), H("60 45 DB C0")]),
        st.binary(max_size=100).map(lambda b: b.replace(b"\x00", b"\xc0")),
    ),
)
ip_packets = st.builds(
    lambda first, rest: bytes([first]) + rest,
    st.sampled_from([*range(0x45, 0x50), *range(0x60, 0x70)]),
    st.binary(max_size=200),
)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200)

frames_strategy: st.SearchStrategy[Frame] = st.one_of(
    coap_messages.map(ConfigurationFrame),
    texts.map(DiagnosticFrame),
    ip_packets.map(IpFrame),
)


def encode(frame: Frame) -> bytes:
    match frame:
        case ConfigurationFrame(coap):
            return encode_configuration(coap)
        case DiagnosticFrame(text):
            return encode_diagnostic(text)
        case IpFrame(packet):
            return encode_ip(packet)


@given(coap_messages)
def test_configuration_round_trip(coap: bytes) -> None:
    wire = encode_configuration(coap)
    assert wire[0] == wire[-1] == 0xC0
    assert 0xC0 not in wire[1:-1]
    assert decode_all(wire)[0] == [ConfigurationFrame(coap)]


@given(texts)
def test_diagnostic_round_trip(text: str) -> None:
    assert decode_all(encode_diagnostic(text))[0] == [DiagnosticFrame(text)]


@given(ip_packets)
def test_ip_round_trip(packet: bytes) -> None:
    assert decode_all(encode_ip(packet))[0] == [IpFrame(packet)]


@given(st.lists(frames_strategy, max_size=10), st.lists(st.integers(0, 5000), max_size=10))
def test_stream_round_trip_at_random_cuts(frames: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode(f) for f in frames)
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    decoded, counters = decode_in_pieces(pieces)
    assert decoded == frames
    only(counters, frames_ok=len(frames), ip_frames=sum(isinstance(f, IpFrame) for f in frames))


def vector_stream() -> tuple[bytes, list[Frame]]:
    frames: list[Frame] = [
        ConfigurationFrame(H("40 01 C0 DB")),
        DiagnosticFrame("Hello World! \u00e9\u20ac"),
        IpFrame(H("6F 00 C0 DB DC DD")),
        ConfigurationFrame(H("41 01 12 34 42 B1 33 01 30")),
        ConfigurationFrame(H("40 01 DB DC DB DD C0 C0")),
    ]
    return b"".join(encode(f) for f in frames), frames


def test_one_byte_at_a_time() -> None:
    wire, frames = vector_stream()
    decoded, counters = decode_in_pieces([wire[i : i + 1] for i in range(len(wire))])
    assert decoded == frames
    only(counters, frames_ok=5, ip_frames=1)


def test_every_two_way_split() -> None:
    wire, frames = vector_stream()
    for cut in range(len(wire) + 1):
        decoded, counters = decode_in_pieces([wire[:cut], wire[cut:]])
        assert decoded == frames, cut
        only(counters, frames_ok=5, ip_frames=1)


def test_every_two_way_split_with_noise_bad_frames_and_an_oversized_frame() -> None:
    wire = b"noise" + GOOD + H("A9 01 DB 41 C0 99 C0 0A DB C0") + encode_diagnostic("y" * 40) + GOOD
    whole = decode_all(wire, max_message_size=16)
    assert whole[0] == [GOOD_FRAME, GOOD_FRAME]
    only(whole[1], frames_ok=2, noise_bytes=5, bad_escape=1, unknown_type=1, aborted=1, oversized=1)
    for cut in range(len(wire) + 1):
        assert decode_in_pieces([wire[:cut], wire[cut:]], max_message_size=16) == whole, cut


# --- Fuzzing -------------------------------------------------------------------------------------

# Biased towards the bytes that matter so that escapes, aborts and types are hit often.
line_bytes = st.lists(
    st.one_of(
        st.sampled_from([0xC0, 0xDB, 0xDC, 0xDD, 0xA9, 0x0A, 0x45, 0x4F, 0x60, 0x6F]),
        st.integers(0, 255),
    ),
    max_size=400,
).map(bytes)


@settings(max_examples=300)
@given(line_bytes, st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_never_raise_and_do_not_depend_on_cuts(data: bytes, cuts: list[int]) -> None:
    whole = decode_all(data, max_message_size=16)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decode_in_pieces(pieces, max_message_size=16) == whole
    frames, counters = whole
    assert counters["frames_ok"] == len(frames)
    assert counters["noise_bytes"] == (data.find(0xC0) if 0xC0 in data else len(data))


@settings(max_examples=300)
@given(
    st.lists(frames_strategy, min_size=1, max_size=6),
    st.lists(st.one_of(st.just(b""), line_bytes), min_size=7, max_size=7),
)
def test_noise_between_frames_loses_no_good_frame(frames: list[Frame], noises: list[bytes]) -> None:
    wire = b""
    for frame, noise in zip(frames, noises, strict=False):
        wire += noise + encode(frame)
    wire += noises[-1]
    decoded, _ = decode_all(wire)
    # Noise may itself decode as a frame (a diagnostic, say): the good ones are a subsequence.
    remaining = iter(decoded)
    assert all(any(got == frame for got in remaining) for frame in frames)
