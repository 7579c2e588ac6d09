"""Every object definition the gateway knows without any DDF file: the OMA core objects and the
common IPSO objects, each in every version listed in ``core.py`` and ``ipso.py``."""

from __future__ import annotations

from gateway.lwm2m.model.core import CORE_MODELS
from gateway.lwm2m.model.ipso import IPSO_MODELS
from gateway.lwm2m.model.types import ObjectModel

BUILTIN_MODELS: tuple[ObjectModel, ...] = CORE_MODELS + IPSO_MODELS
