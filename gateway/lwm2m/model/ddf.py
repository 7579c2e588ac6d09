"""Loader for OMA DDF files: the XML object definitions of the OMA LwM2M registry (schema ``LWM2M.xsd``).

A file holds one ``<LWM2M>`` root with one or more ``<Object ObjectType="MODefinition">``::

    <LWM2M>
      <Object ObjectType="MODefinition">
        <Name>Temperature</Name> <ObjectID>3303</ObjectID> <ObjectVersion>1.1</ObjectVersion>
        <MultipleInstances>Multiple</MultipleInstances> <Mandatory>Optional</Mandatory>
        <Resources>
          <Item ID="5700"><Name>Sensor Value</Name><Operations>R</Operations>
            <MultipleInstances>Single</MultipleInstances><Mandatory>Mandatory</Mandatory>
            <Type>Float</Type><RangeEnumeration/><Units/><Description/></Item>
        </Resources>
      </Object>
    </LWM2M>

Tolerated: any XML namespace, a byte-order mark, an XML declaration naming another encoding, unknown
elements, whitespace around values, element names in another letter case, and missing optional
elements (versions default to 1.0, instances to Single, Mandatory to Optional, texts to empty).
Required: ``ObjectID`` and ``Name`` of the object, ``ID`` and ``Name`` of each resource. A resource
without ``<Type>`` is ``NONE`` if executable, else ``OPAQUE`` (its values are taken as bytes).

Safety: the files come from the operator, but a DDF file has no use for a document type declaration,
so any ``<!DOCTYPE`` or ``<!ENTITY`` is refused before the XML parser sees the text; that rules out
entity expansion ("billion laughs") and external entities with the standard library parser alone.
Files are also limited to :data:`MAX_DDF_BYTES`.

Every problem is a :class:`ModelError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import codecs
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from gateway.lwm2m.model.types import (
    ObjectModel,
    Operations,
    ResourceModel,
    ResourceType,
    object_urn,
    version_key,
)

# The largest registry files are around 100 kB; anything far bigger is not a DDF file.
MAX_DDF_BYTES = 4 * 1024 * 1024

MAX_ID = 65535

_DECLARATION_ENCODING = re.compile(rb"""\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_DTD_MARKUP = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)

# Type spellings, compared without case, spaces or underscores ("Unsigned Integer", "unsignedInteger").
_TYPES: dict[str, ResourceType] = {
    "string": ResourceType.STRING,
    "integer": ResourceType.INTEGER,
    "unsignedinteger": ResourceType.UNSIGNED_INTEGER,
    "float": ResourceType.FLOAT,
    "boolean": ResourceType.BOOLEAN,
    "opaque": ResourceType.OPAQUE,
    "time": ResourceType.TIME,
    "objlnk": ResourceType.OBJLNK,
    "corelnk": ResourceType.CORELNK,
    "none": ResourceType.NONE,
}

_OPERATION_LETTERS: dict[str, Operations] = {"R": Operations.R, "W": Operations.W, "E": Operations.E}


class ModelError(Exception):
    """An object definition that cannot be used; ``source`` names the file, ``problem`` says why.

    ``str(error)`` is ``"<source>: <problem>"``, ready for the log.
    """

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class _Invalid(Exception):
    """A problem inside one file; :func:`parse_ddf` adds the file name."""


def load_ddf(path: str | os.PathLike[str]) -> list[ObjectModel]:
    """The object definitions in the DDF file at ``path``; any problem, including an unreadable or
    oversized file, raises :class:`ModelError` naming the file."""
    source = os.fspath(path)
    try:
        with Path(source).open("rb") as file:
            data = file.read(MAX_DDF_BYTES + 1)
    except OSError as exc:
        raise ModelError(source, f"cannot read the file: {exc.strerror or exc}") from exc
    return parse_ddf(data, source)


def parse_ddf(data: bytes, source: str = "<DDF>") -> list[ObjectModel]:
    """The object definitions in the DDF document ``data``, in document order.

    Raises :class:`ModelError` (with ``source`` as its file name) for a document that is too large,
    not decodable, declares a DTD or entities, is not well-formed XML, has no ``<Object>``, or has an
    object or resource that breaks the rules in the module documentation.
    """
    try:
        if len(data) > MAX_DDF_BYTES:
            raise _Invalid(f"larger than {MAX_DDF_BYTES} bytes, not an object definition file")
        text = _decode(data)
        if _DTD_MARKUP.search(text):
            raise _Invalid("contains a DOCTYPE or ENTITY declaration, which DDF files never need; refused")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise _Invalid(f"not well-formed XML: {exc}") from exc
        objects = [root] if _local(root.tag) == "object" else _children(root, "object")
        if not objects:
            raise _Invalid(f"no <Object> element under <{_local_name(root.tag)}>")
        return [_object(element) for element in objects]
    except _Invalid as exc:
        raise ModelError(source, str(exc)) from None


def _decode(data: bytes) -> str:
    """The document as text: a byte-order mark wins, then the XML declaration, then UTF-8."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if encoding is None:
        declared = _DECLARATION_ENCODING.match(data)
        encoding = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise _Invalid(f"unknown character encoding {encoding!r} in the XML declaration") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _Invalid(f"not valid {encoding} text at byte {exc.start}") from None


def _local(tag: object) -> str:
    """An element's name without namespace, lower-cased for comparison ("" for comments and the like)."""
    return _local_name(tag).lower()


def _local_name(tag: object) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str) -> str:
    """The stripped text of the first child called ``name``; "" when there is none."""
    for child in element:
        if _local(child.tag) == name:
            return "".join(child.itertext()).strip()
    return ""


def _number(value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise _Invalid(f"{what} {value!r} is not a number")
    number = int(value)
    if number > MAX_ID:
        raise _Invalid(f"{what} {number} is out of range 0..{MAX_ID}")
    return number


def _version(value: str, what: str) -> str:
    if not value:
        return "1.0"
    try:
        version_key(value)
    except ValueError:
        raise _Invalid(f"{what} {value!r} is not a version like 1.0 or 1.1") from None
    return value


def _multiple(element: ET.Element, where: str) -> bool:
    return _choice(_text(element, "multipleinstances"), f"{where}: <MultipleInstances>", "Multiple", "Single")


def _mandatory(element: ET.Element, where: str) -> bool:
    return _choice(_text(element, "mandatory"), f"{where}: <Mandatory>", "Mandatory", "Optional")


def _choice(value: str, what: str, yes: str, no: str) -> bool:
    """``True`` for ``yes``, ``False`` for ``no`` or a missing value; anything else is invalid."""
    if not value or value.lower() == no.lower():
        return False
    if value.lower() == yes.lower():
        return True
    raise _Invalid(f"{what} {value!r} is neither {yes} nor {no}")


def _operations(value: str, where: str) -> Operations:
    operations = Operations.NONE
    for letter in value.upper():
        flag = _OPERATION_LETTERS.get(letter)
        if flag is None:
            raise _Invalid(f"{where}: <Operations> {value!r} is not one of R, W, RW, E or empty")
        operations |= flag
    return operations


def _type(value: str, operations: Operations, where: str) -> ResourceType:
    if not value:
        # Executables carry no value. A readable resource without a type exists in the OMA registry
        # itself (10482); its values can only be taken as bytes, as for an unknown object.
        return ResourceType.NONE if Operations.E in operations else ResourceType.OPAQUE
    rtype = _TYPES.get(value.lower().replace(" ", "").replace("_", ""))
    if rtype is None:
        raise _Invalid(f"{where}: <Type> {value!r} is not an LwM2M data type")
    return rtype


def _object(element: ET.Element) -> ObjectModel:
    oid_text = _text(element, "objectid")
    if not oid_text:
        raise _Invalid("an <Object> has no <ObjectID>")
    oid = _number(oid_text, "<ObjectID>")
    where = f"object {oid}"
    name = _text(element, "name")
    if not name:
        raise _Invalid(f"{where}: <Name> is missing or empty")
    version = _version(_text(element, "objectversion"), f"{where}: <ObjectVersion>")
    resources: dict[int, ResourceModel] = {}
    for container in _children(element, "resources"):
        for item in _children(container, "item"):
            resource = _resource(item, where)
            if resource.id in resources:
                raise _Invalid(f"{where}: resource {resource.id} is defined twice")
            resources[resource.id] = resource
    return ObjectModel(
        id=oid,
        name=name,
        version=version,
        lwm2m_version=_version(_text(element, "lwm2mversion"), f"{where}: <LWM2MVersion>"),
        multiple=_multiple(element, where),
        mandatory=_mandatory(element, where),
        urn=_text(element, "objecturn") or object_urn(oid, version),
        description=_text(element, "description1"),
        resources=resources,
    )


def _resource(item: ET.Element, where: str) -> ResourceModel:
    rid_text = (item.get("ID") or item.get("id") or "").strip()
    if not rid_text:
        raise _Invalid(f"{where}: an <Item> has no ID attribute")
    rid = _number(rid_text, f"{where}: resource ID")
    where = f"{where}, resource {rid}"
    name = _text(item, "name")
    if not name:
        raise _Invalid(f"{where}: <Name> is missing or empty")
    operations = _operations(_text(item, "operations"), where)
    return ResourceModel(
        id=rid,
        name=name,
        type=_type(_text(item, "type"), operations, where),
        operations=operations,
        multiple=_multiple(item, where),
        mandatory=_mandatory(item, where),
        units=_text(item, "units"),
        range=_text(item, "rangeenumeration"),
        description=_text(item, "description"),
    )
