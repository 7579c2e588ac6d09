"""LwM2M devices as ThingsBoard devices: profiles, values upstream, writes and RPC downstream.

- :mod:`~gateway.lwm2m.bridge.profiles`: LwM2M device profiles (TOML) and the endpoint -> profile choice;
- :mod:`~gateway.lwm2m.bridge.tbprofile_import`: ThingsBoard profile JSON -> profile TOML (``profiles import``);
- :mod:`~gateway.lwm2m.bridge.mapping`: values <-> ThingsBoard keys, Leshan's text form, JSON -> LwM2M values;
- :mod:`~gateway.lwm2m.bridge.rpc`: ThingsBoard's LwM2M RPC methods;
- :mod:`~gateway.lwm2m.bridge.bridge`: :class:`LwM2mBridge`, the listener on the server and the
  hub's southbound adapter.

The bridge and RPC names are loaded on first use, so that ``edge-gateway profiles ...`` does not import
the LwM2M server (and aiocoap) just to convert a file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway.lwm2m.bridge.profiles import (
    DEFAULT_PROFILE_NAME,
    AfterRegistration,
    ObserveStrategy,
    PathSpec,
    Profile,
    ProfileError,
    ProfileSet,
    load_profile_file,
    load_profiles,
)

if TYPE_CHECKING:
    from gateway.lwm2m.bridge.bridge import BridgeConfig, BridgeStats, LwM2mBridge
    from gateway.lwm2m.bridge.rpc import LwM2mRpcError

_LAZY = {
    "BridgeConfig": "gateway.lwm2m.bridge.bridge",
    "BridgeStats": "gateway.lwm2m.bridge.bridge",
    "LwM2mBridge": "gateway.lwm2m.bridge.bridge",
    "LwM2mRpcError": "gateway.lwm2m.bridge.rpc",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_PROFILE_NAME",
    "AfterRegistration",
    "BridgeConfig",
    "BridgeStats",
    "LwM2mBridge",
    "LwM2mRpcError",
    "ObserveStrategy",
    "PathSpec",
    "Profile",
    "ProfileError",
    "ProfileSet",
    "load_profile_file",
    "load_profiles",
]
