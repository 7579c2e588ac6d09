"""Slipmux decoder throughput on a stream of typical 60-byte CoAP notifications.

Run: ``python benchmarks/slipmux_bench.py [--frames N] [--repeat R]``

Reports wire MB/s and frames/s for several read sizes (a serial port read returns whatever has
arrived: a few bytes at low load, up to the driver buffer when the loop was busy), and what a
saturated 115200-baud link costs in CPU per port, and for 8 ports, at the measured rate.
Times are CPU time of this process (best of ``--repeat``), so other load on the machine
inflates them less than wall-clock time would.
"""

from __future__ import annotations

import argparse
import time

from gateway.transport.slipmux_frames import SlipmuxDecoder, encode_configuration, frame_check_sequence

#: 8N1: ten bits on the line per byte.
BAUD_115200_BYTES_PER_S = 115200 / 10


def notification(seq: int) -> bytes:
    """A 60-byte CoAP 2.05 NON notification: Observe, Content-Format SenML JSON, a temperature."""
    mid = seq & 0xFFFF
    header = bytes([0x54, 0x45, mid >> 8, mid & 0xFF]) + b"\x12\x34\xc0\xdb"  # TKL 4; token has C0, DB
    observe = bytes([0x63, (seq >> 16) & 0xFF, (seq >> 8) & 0xFF, seq & 0xFF])  # option 6, 3 bytes
    content_format = bytes([0x61, 110])  # option 12 (delta 6), SenML JSON
    payload = b'[{"n":"/3303/0/5700","v":%5.2f}]' % (20 + (seq % 1000) / 100)
    message = header + observe + content_format + b"\xff" + payload
    padding = 60 - len(message)
    return message + b" " * padding


def build_stream(frames: int) -> bytes:
    return b"".join(encode_configuration(notification(i)) for i in range(frames))


def run(stream: bytes, frames: int, chunk: int, repeat: int) -> tuple[float, float]:
    """Best of ``repeat``: (wire bytes per second, frames per second)."""
    pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    best = float("inf")
    for _ in range(repeat):
        decoder = SlipmuxDecoder()
        got = 0
        start = time.process_time()
        for piece in pieces:
            got += len(decoder.feed(piece))
        elapsed = time.process_time() - start
        assert got == frames, (got, frames)
        best = min(best, elapsed)
    return len(stream) / best, frames / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    stream = build_stream(args.frames)
    print(
        f"{args.frames} notifications, {len(notification(0))}-byte CoAP, "
        f"{len(stream) / args.frames:.1f} wire bytes per frame, {len(stream) / 1e6:.2f} MB"
    )
    fcs_data = stream[: 1 << 20]
    fcs_best = float("inf")
    for _ in range(args.repeat):
        start = time.process_time()
        frame_check_sequence(fcs_data)
        fcs_best = min(fcs_best, time.process_time() - start)
    print(f"FCS-16 alone: {len(fcs_data) / fcs_best / 1e6:.1f} MB/s")

    for chunk in (16, 64, 256, 4096, len(stream)):
        bytes_per_s, frames_per_s = run(stream, args.frames, chunk, args.repeat)
        cpu_per_port = BAUD_115200_BYTES_PER_S / bytes_per_s
        label = "whole" if chunk == len(stream) else str(chunk)
        print(
            f"read size {label:>6}: {bytes_per_s / 1e6:6.2f} MB/s {frames_per_s:9.0f} frames/s"
            f"  | 115200 baud saturated: {cpu_per_port:.2%} of a core per port, {8 * cpu_per_port:.2%} for 8"
        )


if __name__ == "__main__":
    main()
