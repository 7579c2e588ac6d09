"""LwM2M object and resource models: the vocabulary (``types``), the built-in core and IPSO objects,
the OMA DDF XML loader and the registry that picks the model for an object id and version."""

from gateway.lwm2m.model.builtin import BUILTIN_MODELS
from gateway.lwm2m.model.ddf import ModelError, load_ddf, parse_ddf
from gateway.lwm2m.model.registry import ClientModels, ModelMatch, ModelRegistry, implied_version
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceModel, ResourceType

__all__ = [
    "BUILTIN_MODELS",
    "ClientModels",
    "ModelError",
    "ModelMatch",
    "ModelRegistry",
    "ObjectModel",
    "Operations",
    "ResourceModel",
    "ResourceType",
    "implied_version",
    "load_ddf",
    "parse_ddf",
]
