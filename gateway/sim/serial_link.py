"""The simulator's serial link: a simulated LwM2M client speaking CoAP in slipmux frames on a serial port
(the LwM2M Non-IP binding, ``b=N``) instead of on a UDP socket.

A :class:`SimClient <gateway.sim.lwm2m_client.SimClient>` only needs a datagram link: ``send(bytes)``,
``recv(n)`` (a message, or :class:`BlockingIOError` when none is waiting) and ``close()``, with a
callback when something can be received. :class:`SlipmuxDatagrams` offers that over a byte stream
(a :class:`~gateway.serial.port.SerialLink` on a real port, or an :class:`~gateway.serial.port.FdLink`
on a pseudo-terminal's master side in tests): every CoAP message the client sends becomes one slipmux
configuration frame (FCS-16 and SLIP escaping from :mod:`gateway.transport.slipmux_frames`), and
every configuration frame that arrives intact is one message to receive. Diagnostic and IP frames
are counted and ignored; noise and broken frames are counted by the decoder and dropped.

The simulator keeps its own CoAP code (message ids, retransmission, block-wise) above the link: only
the framing is shared with the gateway, which is what the byte-exact framer tests pin down.

    links = serial_links(["/dev/ttyUSB0"], baudrate=115200)
    fleet = Fleet(("serial", 0), 1, binding="N", links=links)
    await fleet.start()            # starts the links; each client reads from its own
    await fleet.register_and_wait()

Caveats: writes go through the link's bounded queue; when it is full (the peer does not read) the
frame is dropped and counted as a send error, as a full network would drop a datagram; CoAP
retransmits. The link registers its descriptor with the loop itself, so :meth:`SlipmuxDatagrams.fileno`
is -1 (nothing for the fleet to watch).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from gateway.serial.port import ByteLink, LinkSettings, LinkState, SerialLink
from gateway.transport.slipmux_frames import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ConfigurationFrame,
    DiagnosticFrame,
    SlipmuxDecoder,
    encode_configuration,
    encode_diagnostic,
)

#: Received messages handed to the client per ``recv`` round before the link asks again.
_MAX_ROUNDS: Final = 10_000


class SlipmuxDatagrams:
    """CoAP messages in slipmux frames over one byte stream, with a socket's ``send``/``recv`` surface.

    ``start(readable)`` starts the stream; ``readable()`` is called while received messages wait
    (it takes them with :meth:`recv`). The link is owned from then on: :meth:`close` closes it.
    """

    def __init__(self, link: ByteLink, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.link = link
        self.name = link.name
        self.decoder = SlipmuxDecoder(max_message_size=max_message_size)
        self._inbox: deque[bytes] = deque()
        self._readable: Callable[[], None] | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.diagnostics = 0
        self.other_frames = 0
        link.on_data = self._received
        link.on_state = self._state_changed

    def start(self, readable: Callable[[], None]) -> None:
        """Open the stream; from now on ``readable()`` hears of every received message."""
        self._readable = readable
        self.link.start()

    @property
    def state(self) -> LinkState:
        return self.link.state

    # -- the socket surface the simulated client uses ----------------------------------------------

    def send(self, data: bytes) -> int:
        """Frame one CoAP message and queue it on the line.

        Raises :class:`~gateway.serial.port.LinkError` (an ``OSError``) when the port is closed or its
        queue is full, as a socket's ``send`` raises when the network cannot take a datagram.
        """
        self.link.write(encode_configuration(data))
        self.frames_out += 1
        return len(data)

    def recv(self, bufsize: int = 65535) -> bytes:
        """The next received CoAP message (at most ``bufsize`` bytes of it, as a datagram socket)."""
        if not self._inbox:
            raise BlockingIOError("no slipmux frame waiting")
        return self._inbox.popleft()[:bufsize]

    def fileno(self) -> int:
        """-1: the link watches its descriptor itself (see the module docstring)."""
        return -1

    def close(self) -> None:
        self._readable = None
        self._inbox.clear()
        self.link.close()

    # -- extra: what a device also does on a serial line --------------------------------------------

    def send_diagnostic(self, text: str) -> None:
        """A diagnostic (log) line to the host, as a device's firmware prints one."""
        self.link.write(encode_diagnostic(text))

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are (line noise, broken frames) for tests of the gateway's resynchronisation."""
        self.link.write(data)

    # -- the stream -----------------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        inbox = self._inbox
        for frame in self.decoder.feed(data):
            if type(frame) is ConfigurationFrame:
                inbox.append(frame.coap)
                self.frames_in += 1
            elif type(frame) is DiagnosticFrame:
                self.diagnostics += 1
            else:
                self.other_frames += 1
        rounds = 0
        while inbox and self._readable is not None and rounds < _MAX_ROUNDS:
            waiting = len(inbox)
            self._readable()
            rounds += 1
            if len(inbox) >= waiting:  # the reader took nothing: do not spin
                break

    def _state_changed(self, state: LinkState) -> None:
        # a (re)opened line starts mid-stream: trust bytes only after the next END
        self.decoder.reset()
        if state is not LinkState.OPEN:
            self._inbox.clear()


def serial_links(paths: Sequence[str], *, baudrate: int = 115200) -> list[SerialLink]:
    """One :class:`~gateway.serial.port.SerialLink` per port path, named after the path's last part
    (reopened with backoff when the port goes away, as the gateway's own ports are)."""
    return [
        SerialLink(os.path.basename(path) or path, LinkSettings(path, baudrate=baudrate), reopen_max_s=5.0)
        for path in paths
    ]


__all__ = ["SlipmuxDatagrams", "serial_links"]
