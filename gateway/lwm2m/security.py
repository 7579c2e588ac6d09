"""The LwM2M security binding: who may register (or bootstrap) under which endpoint name.

The DTLS layer proves *who* the peer is (a PSK identity, a raw public key, a certificate); the
Register (and later the Bootstrap-Request) says *which endpoint* it claims to be. The rule, as in the
LwM2M spec and as ThingsBoard applies it, checked by :class:`SecurityBinding` against the credentials
store (:class:`gateway.store.clients.ClientStore`):

* NoSec, endpoint not in the store: 4.03 Forbidden (admitted only with ``allow_unknown_nosec``);
* NoSec, endpoint stored as ``NO_SEC``: admitted;
* NoSec, endpoint stored with PSK, RPK or X509: 4.03 Forbidden;
* DTLS, the principal matches the endpoint's entry: admitted;
* DTLS, the principal belongs to another endpoint (or the endpoint is not stored): 4.00 Bad Request,
  "the endpoint name does not match the DTLS identity" (LwM2M);
* DTLS, the principal is no longer in the store (removed during the session): 4.03 Forbidden.

"Matches": the PSK identity, the raw public key, the pinned certificate, or (no pinned certificate)
a certificate the trust store accepted whose CN or a subjectAltName is the configured name (the
endpoint name by default). ``allow_unknown_nosec`` is off by default (secure by default: nobody on
the LAN creates devices in ThingsBoard by registering); the demo turns it on.

Every refusal is counted by reason (:meth:`SecurityBinding.stats`, :meth:`SecurityBinding.telemetry`)
and logged with the endpoint, the peer and the reason, once per (endpoint, reason) and
``log_interval`` (repeats are counted and reported with the next line), and at most ``log_burst``
lines per reason and interval (a flood of made-up endpoint names is a few lines). Nothing logged or
sent to the device contains key material; the text sent to the device never names another endpoint.

Wiring: a :class:`SecurityBinding` is the LwM2M server's ``registration_check``
(``LwM2mServer(registration_check=binding)``); it is called with the endpoint name and the remote's
``authenticated_claims`` and returns None (admit) or a :class:`~gateway.lwm2m.server.Refusal`.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from aiocoap.numbers.codes import Code

from gateway.lwm2m.server.admission import Refusal
from gateway.lwm2m.tbcredentials import SecurityMode
from gateway.store.clients import PINNED_CHAIN_ERRORS_ACCEPTED, ClientEntry, principal_mode

log = logging.getLogger("gateway.lwm2m.security")


class RefusalReason(enum.StrEnum):
    """Why a registration was refused (the value is the counter's name)."""

    UNKNOWN_ENDPOINT = "unknown_endpoint"
    NOSEC_FOR_SECURED_ENDPOINT = "nosec_for_secured_endpoint"
    ENDPOINT_MISMATCH = "endpoint_mismatch"
    CREDENTIALS_REMOVED = "credentials_removed"
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"
    UNSUPPORTED_CLAIMS = "unsupported_claims"

    @property
    def code(self) -> Code:
        """4.00 when the endpoint name does not match the DTLS identity (LwM2M), 4.03 otherwise."""
        return Code.BAD_REQUEST if self is RefusalReason.ENDPOINT_MISMATCH else Code.FORBIDDEN

    @property
    def telemetry_key(self) -> str:
        """``lwm2mRefused`` + the reason in camel case, e.g. ``lwm2mRefusedUnknownEndpoint``."""
        return "lwm2mRefused" + "".join(w.capitalize() for w in self.value.split("_"))


@dataclass(frozen=True, slots=True)
class Decision:
    """The binding's answer: admitted, or refused with a CoAP code, a reason, a short ``message`` for
    the device and a ``detail`` for the operator's log."""

    allowed: bool
    code: Code | None = None
    reason: RefusalReason | None = None
    message: str = ""
    detail: str = ""

    def refusal(self) -> Refusal | None:
        """As the LwM2M server's admission hook wants it: None to admit."""
        if self.allowed or self.code is None:
            return None
        return Refusal(self.code, self.message)


ALLOW: Final = Decision(True)
_ALLOW_PENDING: Final = Decision(True, detail="generated credentials confirmed")


class ClientDirectory(Protocol):
    """What the binding asks the credentials store (:class:`~gateway.store.clients.ClientStore` fits)."""

    def get(self, endpoint: str) -> ClientEntry | None: ...

    def entry_for(self, principal: object) -> ClientEntry | None: ...


class SecurityBinding:
    """The LwM2M rule between the DTLS principal and the endpoint name (see the module docstring).

    Call it as the LwM2M server's ``registration_check``: ``binding(endpoint, claims)`` (optionally
    with ``peer``, the remote's address for the log) returns None or a Refusal. :meth:`check` returns
    the full :class:`Decision`; :meth:`check_bootstrap` is the same rule for Bootstrap-Request.
    """

    def __init__(
        self,
        clients: ClientDirectory,
        *,
        allow_unknown_nosec: bool = False,
        log_interval: float = 600.0,
        log_burst: int = 20,
    ) -> None:
        self.clients = clients
        self.allow_unknown_nosec = allow_unknown_nosec
        self.allowed = 0
        self.refusals: collections.Counter[RefusalReason] = collections.Counter()
        self._log = _RefusalLog(log_interval, log_burst)

    def __call__(self, endpoint: str, claims: Sequence[object], peer: str | None = None) -> Refusal | None:
        return self.check(endpoint, claims, peer).refusal()

    def check_bootstrap(self, endpoint: str, claims: Sequence[object], peer: str | None = None) -> Decision:
        """The rule for a Bootstrap-Request (the same credentials serve both servers, as in ThingsBoard)."""
        return self.check(endpoint, claims, peer, operation="Bootstrap-Request")

    def check(
        self, endpoint: str, claims: Sequence[object], peer: str | None = None, *, operation: str = "Register"
    ) -> Decision:
        """Decide, count and (rate-limited) log a refusal."""
        decision = self._decide(endpoint, claims)
        if decision.allowed:
            self.allowed += 1
            if decision is _ALLOW_PENDING:
                self._confirm_pending(endpoint)
            return decision
        assert decision.reason is not None and decision.code is not None
        self.refusals[decision.reason] += 1
        self._log.refused(endpoint, peer, operation, decision)
        return decision

    def _confirm_pending(self, endpoint: str) -> None:
        # the device authenticated with credentials the bootstrap server generated and wrote, and the
        # gateway had not yet committed (a crash between the Write and the Finish): they are its now
        commit = getattr(self.clients, "commit_pending", None)
        if commit is None:
            return
        try:
            commit(endpoint)
            log.info("%s: generated credentials confirmed by the device's first use", endpoint)
        except Exception as exc:  # still pending (and accepted): confirmed on the next Register
            log.error("%s: cannot commit the generated credentials: %s", endpoint, exc)

    def _decide(self, endpoint: str, claims: Sequence[object]) -> Decision:
        entry = self.clients.get(endpoint)
        if not claims:
            if entry is None:
                if self.allow_unknown_nosec:
                    return ALLOW
                return _refuse(
                    RefusalReason.UNKNOWN_ENDPOINT,
                    "endpoint not known to this gateway",
                    "NoSec, and the endpoint has no entry in the credentials store",
                )
            if entry.mode is SecurityMode.NO_SEC:
                return ALLOW
            return _refuse(
                RefusalReason.NOSEC_FOR_SECURED_ENDPOINT,
                "this endpoint must use DTLS",
                f"NoSec, but the endpoint is configured for {entry.mode.value}",
            )
        principal = next((c for c in claims if principal_mode(c) is not None), None)
        if principal is None:
            kinds = ", ".join(sorted({type(c).__name__ for c in claims}))
            return _refuse(RefusalReason.UNSUPPORTED_CLAIMS, "unsupported security context", f"claims: {kinds}")
        if entry is not None and entry.matches(principal):
            if entry.mode is SecurityMode.X509 and not _certificate_trusted(entry, principal):
                return _refuse(
                    RefusalReason.UNTRUSTED_CERTIFICATE,
                    "certificate not trusted",
                    f"{principal}: {getattr(principal, 'chain_error', '') or 'chain not verified'}",
                )
            return ALLOW
        pending = getattr(self.clients, "pending", None)
        candidate = pending(endpoint) if pending is not None else None
        if candidate is not None and candidate.matches(principal):
            return _ALLOW_PENDING
        owner = self.clients.entry_for(principal)
        if owner is None:
            return _refuse(
                RefusalReason.CREDENTIALS_REMOVED,
                "credentials no longer valid",
                f"authenticated with {principal}, which is no longer in the credentials store",
            )
        configured = f"configured for {entry.mode.value}" if entry is not None else "not in the credentials store"
        return _refuse(
            RefusalReason.ENDPOINT_MISMATCH,
            "endpoint name does not match the DTLS identity",
            f"authenticated with {principal}, which belongs to endpoint {owner.endpoint!r}; "
            f"this endpoint is {configured}",
        )

    def stats(self) -> dict[str, int]:
        """Counters: ``allowed``, ``refused`` (total) and ``refused_<reason>`` for every reason."""
        out = {"allowed": self.allowed, "refused": sum(self.refusals.values())}
        for reason in RefusalReason:
            out[f"refused_{reason.value}"] = self.refusals[reason]
        out["log_lines_suppressed"] = self._log.suppressed
        return out

    def telemetry(self) -> dict[str, int]:
        """The counters as the gateway's own telemetry keys (``lwm2mRegistrationsRefused``, one per reason)."""
        out = {"lwm2mRegistrationsRefused": sum(self.refusals.values())}
        for reason in RefusalReason:
            out[reason.telemetry_key] = self.refusals[reason]
        return out


def _refuse(reason: RefusalReason, message: str, detail: str) -> Decision:
    return Decision(False, reason.code, reason, message, detail)


def _certificate_trusted(entry: ClientEntry, principal: object) -> bool:
    if entry.cert is not None:  # pinned: the certificate itself is the credential
        return getattr(principal, "chain_error", "") in PINNED_CHAIN_ERRORS_ACCEPTED
    return bool(getattr(principal, "chain_ok", False))


class _RefusalLog:
    """One warning per (endpoint, reason) and ``interval``; at most ``burst`` per reason and interval.

    What is held back is counted: the next line for that (endpoint, reason) says how many repeats it
    stands for, and when a reason's budget was exhausted one summary line per interval says how many
    lines were dropped.
    """

    def __init__(self, interval: float, burst: int, max_keys: int = 4096) -> None:
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        self.suppressed = 0
        self._last: collections.OrderedDict[tuple[str, RefusalReason], tuple[float, int]] = collections.OrderedDict()
        self._windows: dict[RefusalReason, tuple[float, int, int]] = {}  # start, lines, dropped

    def refused(self, endpoint: str, peer: str | None, operation: str, d: Decision) -> None:
        assert d.reason is not None and d.code is not None
        now = time.monotonic()
        key = (endpoint, d.reason)
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            self.suppressed += 1
            return
        start, lines, dropped = self._windows.get(d.reason, (now, 0, 0))
        if now - start >= self.interval:
            if dropped:
                log.warning(
                    "%d more LwM2M refusals (%s) were not logged in the last %.0f s",
                    dropped,
                    d.reason.value,
                    now - start,
                )
            start, lines, dropped = now, 0, 0
        if lines >= self.burst:
            self._windows[d.reason] = (start, lines, dropped + 1)
            self.suppressed += 1
            return
        self._windows[d.reason] = (start, lines + 1, dropped)
        repeats = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        log.warning(
            "LwM2M %s of %r from %s refused (%s %s): %s%s",
            operation,
            endpoint,
            peer or "an unknown peer",
            d.code.dotted,
            d.reason.value,
            d.detail,
            f" ({repeats} more since the last report)" if repeats else "",
            extra={"endpoint": endpoint, "peer": peer, "error_code": d.code.dotted},
        )


__all__ = ["ALLOW", "ClientDirectory", "Decision", "RefusalReason", "SecurityBinding"]
