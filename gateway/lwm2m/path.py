"""LwM2M paths: ``/``, ``/oid``, ``/oid/iid``, ``/oid/iid/rid`` and ``/oid/iid/rid/riid``.

:class:`LwM2mPath` is an immutable, hashable, ordered value. Paths order like their id tuples, so a
path sorts before everything below it (``/3 < /3/0 < /3/0/0 < /3/1``).

>>> p = LwM2mPath.parse("/3/0/9")
>>> p.object_id, p.instance_id, p.resource_id, p.is_resource
(3, 0, 9, True)
>>> str(p.parent), str(p.parent.child(7).child(1))
('/3/0', '/3/0/7/1')
>>> LwM2mPath.parse_versioned("/3_1.2/0/9")
(LwM2mPath(3, 0, 9), '1.2')

Ids are 0..65535; object instance id 65535 (MAX_ID) is reserved by the specification and rejected.
"""

from __future__ import annotations

from typing import Any, Final

MAX_ID: Final = 65535
#: Object instance id 65535 is reserved (LwM2M Core, "MAX_ID"): no instance may have it.
RESERVED_INSTANCE_ID: Final = 65535

_LEVEL_NAMES: Final = ("object id", "object instance id", "resource id", "resource instance id")


class PathError(ValueError):
    """A text or id sequence is not a valid LwM2M path; the message names the offending text."""


class LwM2mPath:
    """A path to an LwM2M node: root, object, object instance, resource or resource instance."""

    __slots__ = ("_ids", "_text")

    _ids: tuple[int, ...]
    _text: str | None

    def __init__(self, *ids: int) -> None:
        _check_ids(ids)
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_text", None)

    @classmethod
    def _trusted(cls, ids: tuple[int, ...], text: str | None = None) -> LwM2mPath:
        # Construction without validation, for ids that were just checked.
        self = object.__new__(cls)
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_text", text)
        return self

    # -- parsing -------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> LwM2mPath:
        """Parse ``/``, ``/3``, ``/3/0``, ``/3/0/9`` or ``/3/0/7/1``.

        Strict: a leading ``/``, no empty segments (so no trailing ``/``), decimal ASCII ids in range.
        Raises :class:`PathError` naming the bad text otherwise.
        """
        if not isinstance(text, str):
            raise PathError(f"an LwM2M path must be text, not {type(text).__name__}")
        cached = _CACHE.get(text)
        if cached is not None:
            return cached
        if text == "/":
            return ROOT
        if not text.startswith("/"):
            raise PathError(f"invalid LwM2M path {text!r}: must start with '/'")
        segments = text[1:].split("/")
        if len(segments) > 4:
            raise PathError(f"invalid LwM2M path {text!r}: more than 4 levels")
        ids = tuple(_parse_id(segment, level, text) for level, segment in enumerate(segments))
        path = cls._trusted(ids, text if _is_canonical(text, ids) else None)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[text] = path
        return path

    @classmethod
    def parse_versioned(cls, text: str) -> tuple[LwM2mPath, str | None]:
        """Parse a path that may carry ThingsBoard's object version suffix: ``/3_1.2/0/9``.

        Returns the path and the object version (``"1.2"``), or ``None`` for a plain path.
        """
        if not isinstance(text, str):
            raise PathError(f"an LwM2M path must be text, not {type(text).__name__}")
        first_end = text.find("/", 1)
        first = text[1:] if first_end < 0 else text[1:first_end]
        if "_" not in first:
            return cls.parse(text), None
        object_id, _, version = first.partition("_")
        if not _is_version(version):
            raise PathError(f"invalid object version {version!r} in path {text!r}: expected e.g. '1.2'")
        rest = "" if first_end < 0 else text[first_end:]
        return cls.parse("/" + object_id + rest), version

    # -- structure -----------------------------------------------------------------------------------

    @property
    def ids(self) -> tuple[int, ...]:
        """The ids from the object id down, ``()`` for the root."""
        return self._ids

    @property
    def depth(self) -> int:
        """0 for the root, 1 object, 2 object instance, 3 resource, 4 resource instance."""
        return len(self._ids)

    @property
    def object_id(self) -> int | None:
        return self._ids[0] if self._ids else None

    @property
    def instance_id(self) -> int | None:
        return self._ids[1] if len(self._ids) > 1 else None

    @property
    def resource_id(self) -> int | None:
        return self._ids[2] if len(self._ids) > 2 else None

    @property
    def resource_instance_id(self) -> int | None:
        return self._ids[3] if len(self._ids) > 3 else None

    @property
    def is_root(self) -> bool:
        return not self._ids

    @property
    def is_object(self) -> bool:
        return len(self._ids) == 1

    @property
    def is_object_instance(self) -> bool:
        return len(self._ids) == 2

    @property
    def is_resource(self) -> bool:
        return len(self._ids) == 3

    @property
    def is_resource_instance(self) -> bool:
        return len(self._ids) == 4

    @property
    def parent(self) -> LwM2mPath:
        """The path one level up. Raises :class:`PathError` on the root."""
        if not self._ids:
            raise PathError("the root path '/' has no parent")
        return LwM2mPath._trusted(self._ids[:-1])

    def child(self, *ids: int) -> LwM2mPath:
        """This path extended by one or more ids: ``LwM2mPath(3).child(0, 9) == /3/0/9``."""
        new = self._ids + ids
        _check_ids(new)
        return LwM2mPath._trusted(new)

    def startswith(self, prefix: LwM2mPath) -> bool:
        """True if ``prefix`` is this path or one of its ancestors (the root prefixes everything)."""
        n = len(prefix._ids)
        return self._ids[:n] == prefix._ids

    # -- value protocol ------------------------------------------------------------------------------

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = "/" + "/".join(map(str, self._ids))
            object.__setattr__(self, "_text", text)
        return text

    def __repr__(self) -> str:
        return f"LwM2mPath({', '.join(map(str, self._ids))})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LwM2mPath):
            return self._ids == other._ids
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._ids)

    def __lt__(self, other: LwM2mPath) -> bool:
        if isinstance(other, LwM2mPath):
            return self._ids < other._ids
        return NotImplemented

    def __le__(self, other: LwM2mPath) -> bool:
        if isinstance(other, LwM2mPath):
            return self._ids <= other._ids
        return NotImplemented

    def __gt__(self, other: LwM2mPath) -> bool:
        if isinstance(other, LwM2mPath):
            return self._ids > other._ids
        return NotImplemented

    def __ge__(self, other: LwM2mPath) -> bool:
        if isinstance(other, LwM2mPath):
            return self._ids >= other._ids
        return NotImplemented

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LwM2mPath is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("LwM2mPath is immutable")

    def __reduce__(self) -> tuple[type[LwM2mPath], tuple[int, ...]]:
        return (LwM2mPath, self._ids)


def _check_ids(ids: tuple[int, ...]) -> None:
    if len(ids) > 4:
        raise PathError(f"an LwM2M path has at most 4 ids, got {len(ids)}: {ids!r}")
    for level, i in enumerate(ids):
        if type(i) is not int:
            raise PathError(f"{_LEVEL_NAMES[level]} must be an int, got {i!r}")
        if not 0 <= i <= MAX_ID:
            raise PathError(f"{_LEVEL_NAMES[level]} {i} out of range 0..{MAX_ID}")
        if level == 1 and i == RESERVED_INSTANCE_ID:
            raise PathError(f"object instance id {i} is reserved (MAX_ID)")


def _parse_id(segment: str, level: int, text: str) -> int:
    if not segment:
        raise PathError(f"invalid LwM2M path {text!r}: empty segment")
    if not (segment.isascii() and segment.isdigit()) or len(segment) > 8:
        raise PathError(f"invalid LwM2M path {text!r}: {_LEVEL_NAMES[level]} {segment!r} is not a number")
    value = int(segment)
    if value > MAX_ID:
        raise PathError(f"invalid LwM2M path {text!r}: {_LEVEL_NAMES[level]} {value} > {MAX_ID}")
    if level == 1 and value == RESERVED_INSTANCE_ID:
        raise PathError(f"invalid LwM2M path {text!r}: object instance id {value} is reserved (MAX_ID)")
    return value


def _is_canonical(text: str, ids: tuple[int, ...]) -> bool:
    # "/03" parses to /3; only remember the text when str() would give the same.
    return len(text) == len(ids) + sum(len(str(i)) for i in ids)


def _is_version(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return bool(dot) and all(p.isascii() and p.isdigit() and len(p) <= 4 for p in (major, minor))


ROOT: Final = LwM2mPath()

# Devices send the same few names over and over (SenML "n", registration links): parsing each once
# saves the split/int work in the hot decoders. Bounded; cleared wholesale when full.
_CACHE_SIZE: Final = 4096
_CACHE: dict[str, LwM2mPath] = {}
