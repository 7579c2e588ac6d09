"""Who may register: the hook the security layer plugs its binding rule into.

A :data:`RegistrationCheck` is called for every Register with the endpoint name and the transport's
``authenticated_claims`` (empty for NoSec; the DTLS principal otherwise) and returns ``None`` to admit
or a :class:`Refusal` (the CoAP code and a reason sent to the device). It is synchronous: the DTLS layer
has authenticated the peer before the Register arrives, so the check is a lookup.

Until the credentials store exists, :func:`nosec_policy` is the default: NoSec registrations are
admitted only when the operator switched that on (``admit_nosec``), claims-bearing ones always.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiocoap.numbers.codes import Code


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a registration is refused: the code (4.00 Bad Request, 4.03 Forbidden...) and a reason."""

    code: Code
    reason: str


RegistrationCheck = Callable[[str, Sequence[object]], Refusal | None]


def nosec_policy(admit_nosec: bool) -> RegistrationCheck:
    """Admit NoSec endpoints iff ``admit_nosec``; anything with claims is admitted (checked below us)."""

    def check(endpoint: str, claims: Sequence[object]) -> Refusal | None:
        if claims or admit_nosec:
            return None
        return Refusal(Code.FORBIDDEN, f"NoSec registration of {endpoint!r} is not allowed on this gateway")

    return check
