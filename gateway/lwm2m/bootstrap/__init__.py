"""The LwM2M bootstrap server: configurations (:mod:`.config`), their store (:mod:`.store`), the
sans-IO sequence (:mod:`.session`), the objects it writes (:mod:`.objects`) and the server on its own
listeners (:mod:`.server`). Operator commands: :mod:`.cli`."""

from gateway.lwm2m.bootstrap.config import BootstrapConfig, BootstrapConfigError, config_to_json, parse_config
from gateway.lwm2m.bootstrap.server import (
    DEFAULT_DTLS_PORT,
    DEFAULT_PORT,
    BootstrapServer,
    BootstrapSettings,
    trigger_bootstrap,
)
from gateway.lwm2m.bootstrap.session import BootstrapSession, Op, Result, Step
from gateway.lwm2m.bootstrap.store import BootstrapStore, BootstrapStoreError, LastBootstrap

__all__ = [
    "DEFAULT_DTLS_PORT",
    "DEFAULT_PORT",
    "BootstrapConfig",
    "BootstrapConfigError",
    "BootstrapServer",
    "BootstrapSession",
    "BootstrapSettings",
    "BootstrapStore",
    "BootstrapStoreError",
    "LastBootstrap",
    "Op",
    "Result",
    "Step",
    "config_to_json",
    "parse_config",
    "trigger_bootstrap",
]
