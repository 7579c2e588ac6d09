"""Which object definition applies: the built-in models plus the operator's DDF files, by object id and
version, and per registered client the versions that client announced.

An object id nobody defined resolves to ``None``; callers then treat its values as opaque, which is
not an error. A version the registry lacks resolves to the closest one it has (:meth:`ModelRegistry.resolve`
says when that happened), because an approximate model decodes more than none:

- among the versions with the same major number, the newest not newer than the one asked for, else
  the oldest newer one (minor versions only add resources, so an older model misses a few);
- when no version has that major number, the same rule over all versions.

Example::

    >>> registry = ModelRegistry()
    >>> registry.get(3303).version                 # no version asked: the newest
    '1.1'
    >>> match = registry.resolve(3, "1.7")         # a Device version this gateway does not know
    >>> match.model.version, match.exact
    ('1.2', False)
    >>> client = registry.for_client({1: None, 3: "1.0", 3303: None}, lwm2m_version="1.1")
    >>> client.get(1).version, client.get(3).version, client.get(3303).version
    ('1.1', '1.0', '1.0')

A client that lists an object without ``ver`` means the version that goes with its LwM2M enabler
version for the core objects (a 1.1 client's ``</1/0>`` is Server 1.1), and 1.0 for all others
(Core 1.1.1, 7.2.3; :data:`~gateway.lwm2m.model.core.CORE_OBJECT_VERSIONS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.lwm2m.model.builtin import BUILTIN_MODELS
from gateway.lwm2m.model.core import CORE_OBJECT_VERSIONS
from gateway.lwm2m.model.ddf import ModelError, load_ddf
from gateway.lwm2m.model.types import ObjectModel, version_key

# The version of an object outside the enabler's core objects that is registered without ``ver``.
INITIAL_VERSION = "1.0"

BUILTIN_ORIGIN = "built-in"

# Lookups are cached per (object id, version as the client wrote it); clients choose those strings,
# so the cache is bounded rather than left to grow with whatever they send.
_CACHE_LIMIT = 4096

_Version = tuple[int, int]

_CORE_TABLES: list[tuple[_Version, dict[int, str]]] = sorted(
    (version_key(enabler), table) for enabler, table in CORE_OBJECT_VERSIONS.items()
)


@dataclass(frozen=True, slots=True)
class ModelMatch:
    """The model chosen for a request: ``requested`` is the version asked for (``None``: any)."""

    model: ObjectModel
    requested: str | None = None

    @property
    def exact(self) -> bool:
        """Whether the model has the requested version (always true when none was requested)."""
        if self.requested is None:
            return True
        wanted = _requested_key(self.requested)
        return wanted is not None and wanted == version_key(self.model.version)


class ModelRegistry:
    """Object models keyed by (object id, object version).

    Starts with ``models`` (the built-ins unless told otherwise); :meth:`add` and :meth:`load_dir`
    add more, replacing a definition of the same id and version, so that a DDF file can correct a
    built-in. Not thread-safe; it lives on the gateway's event loop.
    """

    def __init__(self, models: Iterable[ObjectModel] = BUILTIN_MODELS) -> None:
        self._models: dict[int, dict[_Version, ObjectModel]] = {}
        self._origins: dict[tuple[int, _Version], str] = {}
        self._cache: dict[tuple[int, str | None], ModelMatch | None] = {}
        for model in models:
            self.add(model)

    def add(self, model: ObjectModel, origin: str = BUILTIN_ORIGIN) -> None:
        """Adds ``model``, replacing any model with the same id and version; ``origin`` says where it
        came from (a file name) for :meth:`origin`. Raises ``ValueError`` for a malformed version."""
        key = version_key(model.version)
        self._models.setdefault(model.id, {})[key] = model
        self._origins[(model.id, key)] = origin
        self._cache.clear()

    def load_dir(self, path: str | os.PathLike[str]) -> list[ModelError]:
        """Loads every ``*.xml`` DDF file directly in the directory ``path``, in name order.

        A file that cannot be used is skipped and reported; the others still load. An object id and
        version defined by two files is kept from the first and reported for the second. Returns the
        problems (empty when everything loaded) for the caller to log.
        """
        directory = Path(path)
        try:
            files = sorted(
                entry for entry in directory.iterdir() if entry.suffix.lower() == ".xml" and entry.is_file()
            )
        except OSError as exc:
            return [ModelError(str(directory), f"cannot list the DDF model directory: {exc.strerror or exc}")]
        errors: list[ModelError] = []
        defined_by: dict[tuple[int, _Version], str] = {}
        for file in files:
            try:
                models = load_ddf(file)
            except ModelError as exc:
                errors.append(exc)
                continue
            for model in models:
                key = (model.id, version_key(model.version))
                if key in defined_by:
                    errors.append(
                        ModelError(
                            str(file),
                            f"object {model.id} version {model.version} is already defined by "
                            f"{defined_by[key]}; this definition is ignored",
                        )
                    )
                    continue
                defined_by[key] = str(file)
                self.add(model, origin=str(file))
        return errors

    def get(self, oid: int, version: str | None = None) -> ObjectModel | None:
        """The model of object ``oid`` in ``version`` or the closest version there is (no version:
        the newest); ``None`` when the object is unknown. :meth:`resolve` tells whether it is exact."""
        match = self.resolve(oid, version)
        return None if match is None else match.model

    def model_of(self, oid: int) -> ObjectModel | None:
        """The newest model of object ``oid``, or ``None``: the lookup the codecs take."""
        return self.get(oid)

    def resolve(self, oid: int, version: str | None = None) -> ModelMatch | None:
        """Like :meth:`get`, with the requested version kept so that ``.exact`` says whether the
        registry had it. A version that does not parse (``"1"``, ``"x"``) gets the newest model,
        not exact. Surrounding quotes (as LwM2M 1.0 writes ``ver="1.0"``) are ignored."""
        cache_key = (oid, version)
        if cache_key in self._cache:
            return self._cache[cache_key]
        match = self._resolve(oid, version)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[cache_key] = match
        return match

    def _resolve(self, oid: int, version: str | None) -> ModelMatch | None:
        versions = self._models.get(oid)
        if not versions:
            return None
        if version is None:
            return ModelMatch(versions[max(versions)])
        wanted = _requested_key(version)
        if wanted is None:
            return ModelMatch(versions[max(versions)], requested=version)
        return ModelMatch(versions[_closest(versions, wanted)], requested=version)

    def versions(self, oid: int) -> tuple[str, ...]:
        """The versions of object ``oid`` the registry has, oldest first (empty if unknown)."""
        return tuple(model.version for _, model in sorted(self._models.get(oid, {}).items()))

    def object_ids(self) -> list[int]:
        """Every object id with at least one model, ascending."""
        return sorted(self._models)

    def origin(self, oid: int, version: str) -> str | None:
        """Where the model of ``oid`` in exactly ``version`` came from: :data:`BUILTIN_ORIGIN` or the
        DDF file's path; ``None`` if there is no such model."""
        try:
            return self._origins.get((oid, version_key(version)))
        except ValueError:
            return None

    def for_client(self, objects: Mapping[int, str | None], lwm2m_version: str = "1.0") -> ClientModels:
        """The view for one registered client; ``objects`` maps every object id the client listed
        to the ``ver`` it gave, ``None`` where it gave none (``</3>;ver=1.1,</3303/0>`` ->
        ``{3: "1.1", 3303: None}``), and ``lwm2m_version`` is its ``lwm2m=`` parameter."""
        return ClientModels(self, objects, lwm2m_version)

    def __contains__(self, oid: object) -> bool:
        return oid in self._models

    def __len__(self) -> int:
        """The number of (object id, version) models."""
        return sum(len(versions) for versions in self._models.values())


class ClientModels:
    """The models for one client: the object versions it registered, resolved through the registry.

    An object the client listed without a version has the version :func:`implied_version` gives; an
    object it did not list at all gets the registry's newest model. Lookups go through the
    registry's cache, so a view costs only the mapping it was given and stays current when the
    registry changes.
    """

    __slots__ = ("_lwm2m_version", "_objects", "_registry")

    def __init__(
        self, registry: ModelRegistry, objects: Mapping[int, str | None], lwm2m_version: str = "1.0"
    ) -> None:
        self._registry = registry
        self._lwm2m_version = lwm2m_version
        self._objects = {
            oid: version or implied_version(oid, lwm2m_version) for oid, version in objects.items()
        }

    def resolve(self, oid: int) -> ModelMatch | None:
        """The model for ``oid`` and whether it has the version the client registered."""
        return self._registry.resolve(oid, self._objects.get(oid))

    def get(self, oid: int) -> ObjectModel | None:
        """The model for ``oid`` in the client's version (or the closest), ``None`` if unknown."""
        match = self.resolve(oid)
        return None if match is None else match.model

    def model_of(self, oid: int) -> ObjectModel | None:
        """Same as :meth:`get`: the lookup the codecs take."""
        return self.get(oid)

    def inexact(self) -> dict[int, ModelMatch]:
        """The registered objects whose version the registry does not have, with the model used
        instead (unknown objects are left out: they are opaque, not approximated). For a log line
        at registration."""
        result: dict[int, ModelMatch] = {}
        for oid in sorted(self._objects):
            match = self.resolve(oid)
            if match is not None and not match.exact:
                result[oid] = match
        return result

    @property
    def objects(self) -> Mapping[int, str]:
        """The object ids the client registered with their versions, implied ones filled in."""
        return dict(self._objects)

    @property
    def lwm2m_version(self) -> str:
        return self._lwm2m_version


def implied_version(oid: int, lwm2m_version: str = "1.0") -> str:
    """The version of object ``oid`` registered without ``ver`` by a client of ``lwm2m_version``:
    for a core object the one its enabler version specifies (the newest known enabler version not
    newer than the client's, so 1.1.1 counts as 1.1), for any other object 1.0.

    >>> [implied_version(1, "1.1"), implied_version(4, "1.1.1"), implied_version(1, "1.0")]
    ['1.1', '1.2', '1.0']
    >>> implied_version(3303, "1.1")
    '1.0'
    """
    major, _, rest = lwm2m_version.strip().strip('"').partition(".")
    minor = rest.partition(".")[0]
    try:
        client = version_key(f"{major}.{minor}")
    except ValueError:
        client = (1, 0)
    tables = [table for enabler, table in _CORE_TABLES if enabler <= client]
    return tables[-1].get(oid, INITIAL_VERSION) if tables else INITIAL_VERSION


def _requested_key(version: str) -> _Version | None:
    """A version as a client wrote it, quotes and all (``ver="1.0"`` in LwM2M 1.0), or ``None``."""
    try:
        return version_key(version.strip().strip('"'))
    except ValueError:
        return None


def _closest(available: Iterable[_Version], wanted: _Version) -> _Version:
    """The version to use for ``wanted``; the module documentation states the rule."""
    candidates = sorted(available)
    same_major = [v for v in candidates if v[0] == wanted[0]]
    pool = same_major or candidates
    not_newer = [v for v in pool if v <= wanted]
    return not_newer[-1] if not_newer else pool[0]
