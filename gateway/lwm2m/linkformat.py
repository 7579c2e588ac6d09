"""CoRE Link Format (RFC 6690) as LwM2M uses it: registration payloads, Discover and Bootstrap-Discover.

The parser is lenient the way real clients need: quoted and unquoted attribute values, attributes
without a value, commas and semicolons inside quotes, whitespace and newlines between links and
parameters, empty list elements (``,,``). It rejects what cannot be understood: an unterminated
``<`` or quote, text outside a ``<...>``, no links at all, non-UTF-8 bytes, and (for the LwM2M views)
targets that are not LwM2M paths under the root, or ids out of range. Every rejection is a
:class:`LinkFormatError` saying why and where.

>>> reg = parse_registration(b'</>;rt="oma.lwm2m";ct="60 110 112 11542",</1>;ver=1.1,</1/0>,</3/0>')
>>> reg.root_path, [int(f) for f in reg.content_formats], reg.objects[1].version, reg.objects[3].instances
('/', [60, 110, 112, 11542], '1.1', (0,))
>>> parse_discover(b'</3/0/9>;pmin=10;pmax=60,</3/0/1>')[0].attributes
{'pmin': '10', 'pmax': '60'}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from gateway.lwm2m.codec.formats import ContentFormat
from gateway.lwm2m.path import ROOT, LwM2mPath, PathError


class LinkFormatError(ValueError):
    """A link-format payload could not be understood; the message says why and at which offset."""


@dataclass(frozen=True, slots=True)
class Link:
    """One link: the target between ``<`` and ``>`` and its parameters in order (value None: no ``=``)."""

    target: str
    params: tuple[tuple[str, str | None], ...] = ()

    def get(self, name: str) -> str | None:
        """The value of the first parameter called ``name``; None if absent or given without a value."""
        for key, value in self.params:
            if key == name:
                return value
        return None

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)


_WHITESPACE: Final = " \t\r\n"
_PARAM_NAME_END: Final = frozenset("=;,\"<>" + _WHITESPACE)


def parse_links(payload: bytes | str) -> list[Link]:
    """All links of a link-format document. Raises :class:`LinkFormatError` if there are none."""
    text = _text(payload)
    links: list[Link] = []
    n = len(text)
    pos = 0
    while True:
        pos = _skip_space(text, pos)
        if pos >= n:
            break
        c = text[pos]
        if c == ",":
            pos += 1
            continue
        if c != "<":
            raise LinkFormatError(f"expected '<' at offset {pos}, found {text[pos:pos + 10]!r}")
        close = text.find(">", pos + 1)
        if close < 0:
            raise LinkFormatError(f"unterminated '<' at offset {pos}")
        target = text[pos + 1 : close].strip(_WHITESPACE)
        if "<" in target:
            raise LinkFormatError(f"unterminated '<' at offset {pos}")
        pos = close + 1
        params: list[tuple[str, str | None]] = []
        while True:
            pos = _skip_space(text, pos)
            if pos >= n:
                break
            c = text[pos]
            if c == ",":
                pos += 1
                break
            if c != ";":
                raise LinkFormatError(f"expected ';' or ',' at offset {pos} after link <{target}>")
            pos = _skip_space(text, pos + 1)
            start = pos
            while pos < n and text[pos] not in _PARAM_NAME_END:
                pos += 1
            name = text[start:pos]
            if not name:
                if pos < n and text[pos] in ";,":  # tolerate "<...>;" and ";;"
                    continue
                raise LinkFormatError(f"missing parameter name at offset {start} in link <{target}>")
            pos = _skip_space(text, pos)
            value: str | None = None
            if pos < n and text[pos] == "=":
                pos = _skip_space(text, pos + 1)
                if pos < n and text[pos] == '"':
                    value, pos = _quoted(text, pos)
                else:
                    start = pos
                    while pos < n and text[pos] not in ";,":
                        pos += 1
                    value = text[start:pos].rstrip(_WHITESPACE)
                    if '"' in value:
                        raise LinkFormatError(f"stray '\"' in the value of {name} at offset {start}")
            params.append((name, value))
        links.append(Link(target, tuple(params)))
    if not links:
        raise LinkFormatError("no links in the link-format payload")
    return links


def _text(payload: bytes | str) -> str:
    if isinstance(payload, str):
        return payload
    try:
        return bytes(payload).decode()
    except UnicodeDecodeError as e:
        raise LinkFormatError(f"link format is not UTF-8 (byte offset {e.start})") from None


def _skip_space(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    # text[pos] is the opening quote; returns the unescaped value and the offset after the closing quote.
    start = pos
    pos += 1
    chars: list[str] = []
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "\\" and pos + 1 < n:
            chars.append(text[pos + 1])
            pos += 2
        elif c == '"':
            return "".join(chars), pos + 1
        else:
            chars.append(c)
            pos += 1
    raise LinkFormatError(f"unterminated quoted value starting at offset {start}")


# -- writing -----------------------------------------------------------------------------------------------

_PTOKEN: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()*+-./:<=>?@[]^_`{|}~"
)
#: Attributes written quoted even when their value would not need it (as the LwM2M examples do).
_ALWAYS_QUOTED: Final = frozenset({"rt", "if", "uri", "title", "anchor", "rel", "ct"})


def encode_links(links: Iterable[Link], *, quote: frozenset[str] = frozenset()) -> bytes:
    """A link-format document; values are quoted when the grammar, LwM2M habit (``rt``, ``ct``,
    ``uri``...) or ``quote`` (more attribute names) wants it."""
    quoted = _ALWAYS_QUOTED | quote
    parts = []
    for link in links:
        if ">" in link.target or "<" in link.target:
            raise LinkFormatError(f"link target {link.target!r} contains '<' or '>'")
        items = [f"<{link.target}>"]
        for name, value in link.params:
            if not name or any(c in _PARAM_NAME_END for c in name):
                raise LinkFormatError(f"invalid parameter name {name!r}")
            items.append(name if value is None else f"{name}={_param_value(value, name in quoted)}")
        parts.append(";".join(items))
    return ",".join(parts).encode()


def _param_value(value: str, always_quote: bool) -> str:
    if value and not always_quote and all(c in _PTOKEN for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- registration -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisteredObject:
    """An object a client registered: its version (``ver=``, None if not given) and its instances."""

    id: int
    version: str | None = None
    instances: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistrationLinks:
    """What a Register/Update payload says.

    ``root_path``: where the client's objects live, ``"/"`` unless it declared an alternate root
    (a link with ``rt="oma.lwm2m"``). ``content_formats``: its root ``ct=`` list in declared order,
    unknown numbers dropped, legacy ones (1542, 1543) kept as such so that the server can answer in
    the number the client knows (:func:`gateway.lwm2m.codec.registry.choose_format` does).
    ``objects``: by object id, in payload order; the Security object (0) is never included.
    """

    root_path: str = "/"
    content_formats: tuple[ContentFormat, ...] = ()
    objects: dict[int, RegisteredObject] = field(default_factory=dict)


LWM2M_ROOT_RT: Final = "oma.lwm2m"


def parse_registration(payload: bytes | str) -> RegistrationLinks:
    """Parse a registration payload (Content-Format 40). Raises :class:`LinkFormatError`."""
    links = parse_links(payload)
    root_link = next((link for link in links if LWM2M_ROOT_RT in (link.get("rt") or "").split()), None)
    root = "/" if root_link is None else _normalise_root(root_link.target)
    formats: list[ContentFormat] = []
    versions: dict[int, str | None] = {}
    instances: dict[int, set[int]] = {}
    for link in links:
        path = _path_under_root(link.target, root)
        if path.is_root:
            if link is root_link or root_link is None:
                _add_formats(formats, link)
            continue
        oid = path.ids[0]
        if oid == 0:  # the Security object must not be registered; ignore it if a client does
            continue
        version = link.get("ver")
        if version is not None and not _is_version(version):
            raise LinkFormatError(f"invalid ver={version!r} on <{link.target}>: expected e.g. 1.1")
        if oid not in instances:
            instances[oid] = set()
            versions[oid] = None
        if version is not None:
            versions[oid] = version
        if path.depth >= 2:
            instances[oid].add(path.ids[1])
    objects = {
        oid: RegisteredObject(oid, versions[oid], tuple(sorted(iids))) for oid, iids in instances.items()
    }
    return RegistrationLinks(root, tuple(formats), objects)


def encode_registration(registration: RegistrationLinks, *, quote_versions: bool = False) -> bytes:
    """A registration payload (what a client sends): root link, then each object and its instances.

    ``quote_versions``: write ``ver="1.0"`` as LwM2M 1.0 clients do, instead of 1.1's ``ver=1.1``.
    """
    root = registration.root_path
    prefix = "" if root == "/" else root
    links: list[Link] = []
    if registration.content_formats or root != "/":
        params: list[tuple[str, str | None]] = [("rt", LWM2M_ROOT_RT)]
        if registration.content_formats:
            params.append(("ct", " ".join(str(int(f)) for f in registration.content_formats)))
        links.append(Link(root, tuple(params)))
    for obj in registration.objects.values():
        if obj.version is not None or not obj.instances:
            params = [] if obj.version is None else [("ver", obj.version)]
            links.append(Link(f"{prefix}/{obj.id}", tuple(params)))
        links.extend(Link(f"{prefix}/{obj.id}/{iid}") for iid in obj.instances)
    return encode_links(links, quote=frozenset({"ver"}) if quote_versions else frozenset())


def _normalise_root(target: str) -> str:
    root = target.rstrip("/")
    if not root:
        return "/"
    if not root.startswith("/"):
        raise LinkFormatError(f"alternate root path <{target}> must start with '/'")
    return root


def _path_under_root(target: str, root: str) -> LwM2mPath:
    if root != "/":
        if target.rstrip("/") == root:
            return ROOT
        if not target.startswith(root + "/"):
            raise LinkFormatError(f"link <{target}> is outside the root path {root}")
        target = target[len(root) :]
    if target == "/":
        return ROOT
    try:
        return LwM2mPath.parse(target)
    except PathError as e:
        raise LinkFormatError(f"link <{target}>: {e}") from None


def _add_formats(formats: list[ContentFormat], link: Link) -> None:
    for name, value in link.params:
        if name != "ct" or value is None:
            continue
        for item in value.split():
            if not (item.isascii() and item.isdigit() and len(item) <= 5):
                raise LinkFormatError(f"ct={value!r} on <{link.target}>: {item!r} is not a content format")
            number = int(item)
            if number in _FORMAT_NUMBERS and number not in formats:
                formats.append(ContentFormat(number))


_FORMAT_NUMBERS: Final = frozenset(int(f) for f in ContentFormat)


def _is_version(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return bool(dot) and all(p.isascii() and p.isdigit() and len(p) <= 4 for p in (major, minor))


# -- Discover and Bootstrap-Discover ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveredLink:
    """One link of a Discover answer: the path and its attributes (``pmin``, ``dim``, ``ver``, ``ssid``,
    ``uri``, ``lwm2m``...), values as text without quotes, None for an attribute without value."""

    path: LwM2mPath
    attributes: dict[str, str | None] = field(default_factory=dict)


def parse_discover(payload: bytes | str, root: str = "/") -> list[DiscoveredLink]:
    """The links of a Discover or Bootstrap-Discover answer, in order.

    ``</3/0/9>;pmin=10;pmax=60,</3/0/1>`` or ``</>;lwm2m=1.1,</0/0>;ssid=101;uri="coap://..."``;
    ``root``: the client's alternate root path, if it registered one.
    """
    root = _normalise_root(root)
    result = []
    for link in parse_links(payload):
        attributes: dict[str, str | None] = {}
        for name, value in link.params:
            attributes[name] = value
        result.append(DiscoveredLink(_path_under_root(link.target, root), attributes))
    return result


def encode_discover(links: Iterable[DiscoveredLink], root: str = "/") -> bytes:
    """A Discover or Bootstrap-Discover answer (what a client sends)."""
    root = _normalise_root(root)
    prefix = "" if root == "/" else root
    return encode_links(
        Link(root if link.path.is_root else prefix + str(link.path), tuple(link.attributes.items()))
        for link in links
    )
