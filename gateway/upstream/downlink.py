"""The downlink: what ThingsBoard sends down, routed to the gateway's components; and requests up.

Routing (every message is parsed by :func:`gateway.upstream.thingsboard.parse_downlink`)
    * RPC to a child device (``v1/gateway/rpc``): the device's southbound handler, found through the
      app's :class:`DeviceDirectory`, runs it; the reply goes up on ``v1/gateway/rpc`` as
      ``{"device":..,"id":..,"data":..}``. An RPC for a device that is unknown or offline gets an
      error reply at once, never silence.
    * RPC to the gateway itself (``v1/devices/me/rpc/request/{id}``): a registry of gateway methods
      (``ping`` built in); an unknown method gets an error reply.
    * Shared-attribute updates of a child device go to its handler; those of the gateway itself to
      the registered gateway-attribute listeners.
    * Answers to the gateway's own requests (client-side RPC, attribute requests of the device and
      the gateway API) resolve the awaiting call.

    Malformed messages are logged (rate-limited) and, where a request id could be read, answered
    with an error. Replies are published directly at QoS 1, not through the outbox: ThingsBoard's
    RPC is bound to the session that received it. Without a connection a reply is dropped, counted
    and logged. A connection loss fails the calls awaiting an answer (:class:`ConnectionLost`).

Errors in replies: ``{"error": "<what happened>", "code": "<stable short code>"}`` (the shape of
:meth:`gateway.core.hub.RpcError.as_reply`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway.core.hub import RpcError
from gateway.logs import RateLimited
from gateway.upstream import thingsboard as tb
from gateway.upstream.session import ConnectionLost, SessionState

log = logging.getLogger("gateway.upstream.downlink")

DEFAULT_RPC_TIMEOUT = 30.0


class ChildDevice(Protocol):
    """The southbound side of a child device (:class:`gateway.core.hub.Southbound` fits)."""

    async def rpc(self, device: str, method: str, params: Any, timeout: float) -> Any:
        """Run ``method`` on ``device``; return a JSON-able result or raise :class:`RpcError`."""

    async def attributes_updated(self, device: str, values: Mapping[str, Any], deleted: Sequence[str]) -> None:
        """Shared attributes of ``device`` changed in ThingsBoard."""


class DeviceDirectory(Protocol):
    """Which handler serves a child device right now (:class:`gateway.core.hub.DeviceHub` fits)."""

    def handler_for(self, device: str) -> ChildDevice | None: ...


class DownlinkSession(Protocol):
    """What the downlink needs of :class:`gateway.upstream.session.MqttSession`."""

    @property
    def state(self) -> SessionState: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]: ...

    def next_request_id(self) -> int: ...

    def send_client_rpc(self, method: str, params: Any = None) -> tuple[int, asyncio.Future[None]]: ...

    def set_message_handler(self, handler: Callable[[str, bytes], None]) -> None: ...

    def add_state_listener(self, listener: Callable[[SessionState], None]) -> None: ...


GatewayMethod = Callable[[Any], Awaitable[Any]]
"""A server-side RPC method of the gateway itself: ``await method(params) -> JSON-able result``."""

GatewayAttributesListener = Callable[[tb.AttributeUpdate], Awaitable[None] | None]


@dataclass(slots=True)
class DownlinkStats:
    rpc_requests: int = 0  # server-side RPCs received (child devices and the gateway)
    rpc_errors: int = 0  # of those, answered with an error
    unknown_device: int = 0  # RPCs or attribute updates for a device not connected here
    replies_sent: int = 0
    replies_dropped: int = 0  # not connected when the reply was ready
    attribute_updates: int = 0
    malformed: int = 0  # downlink messages that did not parse
    responses: int = 0  # answers to the gateway's own requests
    unmatched_responses: int = 0  # answers nobody waits for (late, or after a reconnect)


class Downlink:
    """Routes ThingsBoard's downlink; sends the gateway's own requests. One per session."""

    def __init__(
        self,
        session: DownlinkSession,
        directory: DeviceDirectory,
        *,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
    ) -> None:
        self._session = session
        self._directory = directory
        self._rpc_timeout = rpc_timeout
        self._methods: dict[str, GatewayMethod] = {"ping": _ping}
        self._attribute_listeners: list[GatewayAttributesListener] = []
        self._calls: dict[int, asyncio.Future[Any]] = {}  # request id -> awaiting future
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = DownlinkStats()
        self._complain = RateLimited(log, interval=60.0)
        session.set_message_handler(self.handle)
        session.add_state_listener(self._on_state)

    # -- registration -------------------------------------------------------------------------

    def register_method(self, name: str, method: GatewayMethod) -> None:
        """Serve server-side RPC ``name`` to the gateway device (replaces an existing one)."""
        self._methods[name] = method

    def add_gateway_attributes_listener(self, listener: GatewayAttributesListener) -> None:
        """Told of every shared-attribute change of the gateway device itself."""
        self._attribute_listeners.append(listener)

    def stats(self) -> DownlinkStats:
        return replace(self._stats)

    async def close(self) -> None:
        """Cancel running handlers and fail the calls awaiting an answer."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._fail_calls(ConnectionLost("downlink closed"))

    # -- the gateway's own requests -----------------------------------------------------------

    async def call(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        """Client-side RPC: ask ThingsBoard ``method`` and return its answer (JSON value).

        Raises :class:`ConnectionLost` when not connected or when the connection drops first,
        :class:`TimeoutError` when there is no answer within ``timeout`` seconds.
        """
        request_id, sent = self._session.send_client_rpc(method, params)
        return await self._await_answer(request_id, sent, timeout, f"client RPC {method!r}")

    async def request_attributes(
        self, client_keys: Iterable[str] = (), shared_keys: Iterable[str] = (), timeout: float = 10.0
    ) -> tb.AttributeResponse:
        """The gateway device's own attributes (device API); no keys at all asks for every one."""
        request_id = self._session.next_request_id()
        sent = self._session.publish(
            tb.attribute_request_topic(request_id), tb.attribute_request(client_keys, shared_keys)
        )
        answer = await self._await_answer(request_id, sent, timeout, "attribute request")
        assert isinstance(answer, tb.AttributeResponse)
        return answer

    async def request_device_attributes(
        self, device: str, keys: Sequence[str], *, client: bool, timeout: float = 10.0
    ) -> dict[str, Any]:
        """A child device's client (``client=True``) or shared attributes, through the gateway API.

        Keys ThingsBoard does not have are missing from the result.
        """
        keys = list(keys)
        request_id = self._session.next_request_id()
        payload = tb.gateway_attribute_request(request_id, device, keys, client=client)
        sent = self._session.publish(tb.GATEWAY_ATTRIBUTES_REQUEST, payload)
        answer = await self._await_answer(request_id, sent, timeout, f"attribute request for {device!r}")
        assert isinstance(answer, tb.GatewayAttributeResponse)
        if answer.values is not None:
            return dict(answer.values)
        if answer.has_value and len(keys) == 1:
            return {keys[0]: answer.value}
        return {}

    async def _await_answer(self, request_id: int, sent: asyncio.Future[None], timeout: float, what: str) -> Any:
        sent.add_done_callback(_retrieve)
        if sent.done() and sent.exception() is not None:
            raise ConnectionLost(f"{what} not sent: {sent.exception()}")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[request_id] = fut
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"ThingsBoard did not answer the {what} within {timeout:g} s") from None
        finally:
            self._calls.pop(request_id, None)

    # -- routing --------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """The session's message handler: parse, route, never raise."""
        try:
            message = tb.parse_downlink(topic, payload)
        except tb.ProtocolError as exc:
            self._malformed(topic, exc)
            return
        if isinstance(message, tb.GatewayRpcRequest):
            self._child_rpc(message)
        elif isinstance(message, tb.RpcRequest):
            self._gateway_rpc(message)
        elif isinstance(message, tb.GatewayAttributeUpdate):
            self._child_attributes(message)
        elif isinstance(message, tb.AttributeUpdate):
            self._stats.attribute_updates += 1
            for listener in list(self._attribute_listeners):
                self._spawn(_call_listener(listener, message), "gateway attribute listener")
        else:  # answers: RpcResponse, AttributeResponse, GatewayAttributeResponse
            self._answer(message.request_id, message.result if isinstance(message, tb.RpcResponse) else message)

    def _malformed(self, topic: str, exc: tb.ProtocolError) -> None:
        self._stats.malformed += 1
        self._complain.warning(("malformed", topic.rsplit("/", 1)[0]), "ignored a malformed downlink message: %s", exc)
        if exc.request_id is None:
            return
        error = {"error": f"malformed request: {exc}", "code": "bad_request"}
        if topic == tb.GATEWAY_RPC and exc.device is not None:
            self._reply(tb.GATEWAY_RPC, tb.gateway_rpc_reply(exc.device, exc.request_id, error), exc.device)
        elif topic.startswith(tb.DEVICE_RPC_REQUEST):
            self._reply(tb.device_rpc_reply_topic(exc.request_id), tb.dumps(error).encode(), "gateway")

    def _child_rpc(self, req: tb.GatewayRpcRequest) -> None:
        self._stats.rpc_requests += 1
        handler = self._directory.handler_for(req.device)
        if handler is None:
            self._stats.unknown_device += 1
            self._stats.rpc_errors += 1
            self._complain.warning(
                ("rpc-unknown", req.device),
                "RPC %r for device %r: not connected to this gateway",
                req.method,
                req.device,
            )
            error = {
                "error": f"device {req.device!r} is not connected to this gateway",
                "code": "device_offline",
            }
            self._reply(tb.GATEWAY_RPC, tb.gateway_rpc_reply(req.device, req.request_id, error), req.device)
            return
        self._spawn(self._run_child_rpc(handler, req), f"RPC {req.method!r} for {req.device!r}")

    async def _run_child_rpc(self, handler: ChildDevice, req: tb.GatewayRpcRequest) -> None:
        data = await self._run(
            lambda: handler.rpc(req.device, req.method, req.params, self._rpc_timeout),
            f"device {req.device!r}",
            req.method,
        )
        self._reply(tb.GATEWAY_RPC, tb.gateway_rpc_reply(req.device, req.request_id, data), req.device)

    def _gateway_rpc(self, req: tb.RpcRequest) -> None:
        self._stats.rpc_requests += 1
        method = self._methods.get(req.method)
        topic = tb.device_rpc_reply_topic(req.request_id)
        if method is None:
            self._stats.rpc_errors += 1
            self._complain.warning(("unknown-method", req.method), "unknown gateway RPC method %r", req.method)
            error = {"error": f"unknown method {req.method!r}", "code": "unknown_method"}
            self._reply(topic, tb.dumps(error).encode(), "gateway")
            return
        registered = method

        async def run() -> None:
            data = await self._run(lambda: registered(req.params), "the gateway", req.method)
            self._reply(topic, tb.dumps(data).encode(), "gateway")

        self._spawn(run(), f"gateway RPC {req.method!r}")

    async def _run(self, start: Callable[[], Awaitable[Any]], who: str, method: str) -> Any:
        """Run an RPC handler under the RPC timeout; its result, or an error reply object."""
        data, failed = await run_rpc_handler(start, who, method, self._rpc_timeout)
        if failed:
            self._stats.rpc_errors += 1
        return data

    def _child_attributes(self, update: tb.GatewayAttributeUpdate) -> None:
        self._stats.attribute_updates += 1
        handler = self._directory.handler_for(update.device)
        if handler is None:
            self._stats.unknown_device += 1
            self._complain.warning(
                ("attr-unknown", update.device),
                "shared attribute update for device %r, which is not connected to this gateway",
                update.device,
            )
            return
        self._spawn(
            handler.attributes_updated(update.device, update.values, update.deleted),
            f"attribute update for {update.device!r}",
        )

    def _answer(self, request_id: int, answer: Any) -> None:
        fut = self._calls.get(request_id)
        if fut is None or fut.done():
            self._stats.unmatched_responses += 1
            log.debug("answer to request %d, which nobody awaits", request_id)
            return
        self._stats.responses += 1
        fut.set_result(answer)

    def _reply(self, topic: str, payload: bytes, who: str) -> None:
        sent = self._session.publish(topic, payload)
        if sent.done() and sent.exception() is not None:
            self._stats.replies_dropped += 1
            self._complain.warning(("reply-dropped",), "RPC reply for %s dropped: %s", who, sent.exception())
            return
        sent.add_done_callback(_retrieve)
        self._stats.replies_sent += 1

    # -- tasks and connection ---------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, what))

    def _task_done(self, task: asyncio.Task[None], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", what, task.exception())

    def _on_state(self, state: SessionState) -> None:
        if state is not SessionState.CONNECTED:
            self._fail_calls(ConnectionLost("connection to ThingsBoard lost before the answer"))

    def _fail_calls(self, exc: Exception) -> None:
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(exc)


async def run_rpc_handler(
    start: Callable[[], Awaitable[Any]], who: str, method: str, rpc_timeout: float
) -> tuple[Any, bool]:
    """Run an RPC handler under ``rpc_timeout``: (its JSON-able result, False), or (an error reply
    object, True). Never raises (except cancellation)."""
    try:
        # the handler has the timeout too; this one is a safety net for handlers that hang
        async with asyncio.timeout(rpc_timeout + 1.0):
            result = await start()
    except RpcError as exc:
        return exc.as_reply(), True
    except TimeoutError:
        return {"error": f"{who} did not answer {method!r} within {rpc_timeout:g} s", "code": "timeout"}, True
    except Exception as exc:
        log.exception("RPC %r for %s failed", method, who)
        return {"error": f"{method!r} failed: {exc}", "code": "internal"}, True
    if result is None:
        return {}, False
    try:
        tb.dumps(result)
    except (TypeError, ValueError) as exc:
        log.error("RPC %r for %s returned a value that is not JSON: %s", method, who, exc)
        return {"error": f"{method!r} returned a value that is not JSON", "code": "internal"}, True
    return result, False


async def _ping(_params: Any) -> Any:
    return {"pong": True}


async def _call_listener(listener: GatewayAttributesListener, update: tb.AttributeUpdate) -> None:
    result = listener(update)
    if inspect.isawaitable(result):
        await result


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
