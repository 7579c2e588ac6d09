"""The LwM2M server: registration interface, device management, observation, queue mode, Send.

The small typed surface the ThingsBoard bridge, the DTLS layer and the bootstrap server use; none of
them needs to know CoAP. Start with :class:`LwM2mServer` and :class:`RegistrationListener`.
"""

from gateway.lwm2m.server.admission import Refusal, RegistrationCheck, nosec_policy
from gateway.lwm2m.server.config import ServerConfig
from gateway.lwm2m.server.devices import DeviceStatus, Registrations
from gateway.lwm2m.server.errors import (
    CoapError,
    DeviceNotRegistered,
    InvalidResponse,
    LwM2mError,
    QueueFull,
    RequestFailed,
    RequestTimeout,
)
from gateway.lwm2m.server.listener import DeregistrationReason, ObservationEnd, RegistrationListener
from gateway.lwm2m.server.registration import SERVED_VERSIONS, Registration, RegistrationUpdate
from gateway.lwm2m.server.response import Observation, Response, ResponseCode
from gateway.lwm2m.server.server import LwM2mServer

__all__ = [
    "SERVED_VERSIONS",
    "CoapError",
    "DeregistrationReason",
    "DeviceNotRegistered",
    "DeviceStatus",
    "InvalidResponse",
    "LwM2mError",
    "LwM2mServer",
    "Observation",
    "ObservationEnd",
    "QueueFull",
    "Refusal",
    "Registration",
    "RegistrationCheck",
    "RegistrationListener",
    "RegistrationUpdate",
    "Registrations",
    "RequestFailed",
    "RequestTimeout",
    "Response",
    "ResponseCode",
    "ServerConfig",
    "nosec_policy",
]
