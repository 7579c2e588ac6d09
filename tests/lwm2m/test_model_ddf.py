"""The OMA DDF loader: tolerant of how real files are written, strict about what makes a model wrong,
and never fooled into expanding entities. The sample documents are written for these tests."""

from __future__ import annotations

import codecs
import xml.sax.saxutils
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.lwm2m.model.builtin import BUILTIN_MODELS
from gateway.lwm2m.model.ddf import MAX_DDF_BYTES, ModelError, load_ddf, parse_ddf
from gateway.lwm2m.model.types import ObjectModel, Operations, ResourceType

# A made-up object: a hive scale.
HIVE_SCALE = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- a hand-written sample -->
<LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <Object ObjectType="MODefinition">
    <Name>Hive Scale</Name>
    <Description1>Weighs a bee hive.</Description1>
    <ObjectID>33001</ObjectID>
    <ObjectURN>urn:oma:lwm2m:x:33001:1.2</ObjectURN>
    <LWM2MVersion>1.1</LWM2MVersion>
    <ObjectVersion>1.2</ObjectVersion>
    <MultipleInstances>Multiple</MultipleInstances>
    <Mandatory>Optional</Mandatory>
    <Resources>
      <Item ID="0">
        <Name>Weight</Name>
        <Operations>R</Operations>
        <MultipleInstances>Single</MultipleInstances>
        <Mandatory>Mandatory</Mandatory>
        <Type>Float</Type>
        <RangeEnumeration>0..200</RangeEnumeration>
        <Units>kg</Units>
        <Description>Gross weight.</Description>
      </Item>
      <Item ID="1">
        <Name>Tare</Name>
        <Operations>E</Operations>
        <MultipleInstances>Single</MultipleInstances>
        <Mandatory>Optional</Mandatory>
        <Type></Type>
        <RangeEnumeration></RangeEnumeration>
        <Units></Units>
        <Description>Sets the current weight as zero.</Description>
      </Item>
      <Item ID="2">
        <Name>Calibration Points</Name>
        <Operations>RW</Operations>
        <MultipleInstances>Multiple</MultipleInstances>
        <Mandatory>Optional</Mandatory>
        <Type>Unsigned Integer</Type>
        <RangeEnumeration/>
        <Units>g</Units>
        <Description/>
      </Item>
      <Item ID="3">
        <Name>Hive Link</Name>
        <Operations>W</Operations>
        <MultipleInstances>Single</MultipleInstances>
        <Mandatory>Optional</Mandatory>
        <Type>Objlnk</Type>
      </Item>
    </Resources>
    <Description2>Written for the loader's tests.</Description2>
  </Object>
</LWM2M>
"""

# The same kind of document in a default namespace and a prefixed one, laid out carelessly,
# with elements the schema does not know and in unusual letter case.
NAMESPACED = b"""<?xml version='1.0'?>
<lw:LWM2M xmlns:lw="urn:example:lwm2m" xmlns:ext="urn:example:extension">
  <lw:Object ObjectType="MODefinition">
    <lw:Name>  Door Counter  </lw:Name>
    <lw:ObjectID> 33002 </lw:ObjectID>
    <ext:Vendor>ACME</ext:Vendor>
    <lw:MultipleInstances> single </lw:MultipleInstances>
    <lw:Resources>
      <lw:Item ID=" 7 ">
        <lw:Name>Openings</lw:Name>
        <lw:Operations> R </lw:Operations>
        <lw:Type>
            Integer
        </lw:Type>
        <ext:Colour>red</ext:Colour>
      </lw:Item>
      <lw:Item ID="8"><lw:Name>Reset</lw:Name><lw:Operations>e</lw:Operations></lw:Item>
      <lw:Item ID="9"><lw:Name>Last</lw:Name><lw:Operations>R</lw:Operations><lw:TYPE>time</lw:TYPE></lw:Item>
    </lw:Resources>
  </lw:Object>
</lw:LWM2M>
"""

DEFAULT_NAMESPACE = b"""<LWM2M xmlns="http://www.openmobilealliance.org/tech/profiles/LWM2M.xsd">
<Object><Name>Flag</Name><ObjectID>33003</ObjectID><Resources>
<Item ID="0"><Name>Up</Name><Operations>RW</Operations><Type>Boolean</Type></Item>
</Resources></Object></LWM2M>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE LWM2M [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<LWM2M><Object><Name>&lol3;</Name><ObjectID>33004</ObjectID></Object></LWM2M>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE LWM2M SYSTEM "http://example.invalid/evil.dtd">
<LWM2M><Object><Name>x</Name><ObjectID>33005</ObjectID></Object></LWM2M>"""


def minimal(oid: str = "33010", items: str = "", extra: str = "") -> bytes:
    return (
        f"<LWM2M><Object ObjectType='MODefinition'><Name>Thing</Name><ObjectID>{oid}</ObjectID>{extra}"
        f"<Resources>{items}</Resources></Object></LWM2M>"
    ).encode()


def item(rid: str = "0", ops: str = "R", rtype: str = "Integer", extra: str = "") -> str:
    return (
        f"<Item ID='{rid}'><Name>R{rid}</Name><Operations>{ops}</Operations><Type>{rtype}</Type>{extra}"
        "</Item>"
    )


# --- what is read ---------------------------------------------------------------------------------------


def test_a_complete_object() -> None:
    [model] = parse_ddf(HIVE_SCALE, "hive.xml")
    assert (model.id, model.name, model.version, model.lwm2m_version) == (33001, "Hive Scale", "1.2", "1.1")
    assert (model.multiple, model.mandatory) == (True, False)
    assert model.urn == "urn:oma:lwm2m:x:33001:1.2"
    assert model.description == "Weighs a bee hive."
    assert sorted(model.resources) == [0, 1, 2, 3]
    weight = model.resources[0]
    assert (weight.name, weight.type, weight.operations, weight.multiple, weight.mandatory) == (
        "Weight",
        ResourceType.FLOAT,
        Operations.R,
        False,
        True,
    )
    assert (weight.range, weight.units, weight.description) == ("0..200", "kg", "Gross weight.")
    tare = model.resources[1]
    assert (tare.type, tare.operations) == (ResourceType.NONE, Operations.E)
    points = model.resources[2]
    assert (points.type, points.operations, points.multiple) == (
        ResourceType.UNSIGNED_INTEGER,
        Operations.RW,
        True,
    )
    link = model.resources[3]
    assert (link.type, link.operations) == (ResourceType.OBJLNK, Operations.W)
    assert (link.units, link.description) == ("", "")


def test_namespaces_whitespace_case_and_unknown_elements() -> None:
    [model] = parse_ddf(NAMESPACED, "door.xml")
    assert (model.id, model.name, model.multiple, model.mandatory) == (33002, "Door Counter", False, False)
    assert model.version == "1.0" and model.lwm2m_version == "1.0"
    assert model.urn == "urn:oma:lwm2m:x:33002"  # made up when the file has none
    assert model.resources[7].type is ResourceType.INTEGER
    assert model.resources[7].operations == Operations.R
    assert (model.resources[8].type, model.resources[8].operations) == (ResourceType.NONE, Operations.E)
    assert model.resources[9].type is ResourceType.TIME


def test_default_namespace() -> None:
    [model] = parse_ddf(DEFAULT_NAMESPACE)
    assert model.resources[0].type is ResourceType.BOOLEAN and model.resources[0].operations == Operations.RW


def test_missing_optional_elements_take_their_defaults() -> None:
    [model] = parse_ddf(b"<LWM2M><Object><Name>Bare</Name><ObjectID>33011</ObjectID></Object></LWM2M>")
    assert (model.version, model.lwm2m_version) == ("1.0", "1.0")
    assert (model.multiple, model.mandatory) == (False, False)
    assert model.resources == {} and model.description == ""
    [model] = parse_ddf(minimal(items="<Item ID='4'><Name>Bare</Name><Type>String</Type></Item>"))
    bare = model.resources[4]
    assert (bare.operations, bare.multiple, bare.mandatory, bare.units, bare.range) == (
        Operations.NONE,
        False,
        False,
        "",
        "",
    )


def test_utf8_byte_order_mark() -> None:
    [model] = parse_ddf(codecs.BOM_UTF8 + HIVE_SCALE, "bom.xml")
    assert model.id == 33001


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_with_byte_order_mark(encoding: str) -> None:
    text = HIVE_SCALE.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
    [model] = parse_ddf(bom + text.encode(encoding), "utf16.xml")
    assert model.name == "Hive Scale"


def test_declared_latin1() -> None:
    data = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + minimal().replace(
        b"Thing", "Température".encode("latin-1")
    )
    [model] = parse_ddf(data)
    assert model.name == "Température"


def test_several_objects_in_one_file() -> None:
    data = (
        b"<LWM2M>"
        + b"".join(
            f"<Object><Name>O{i}</Name><ObjectID>{33020 + i}</ObjectID></Object>".encode() for i in range(3)
        )
        + b"</LWM2M>"
    )
    assert [m.id for m in parse_ddf(data)] == [33020, 33021, 33022]


def test_an_object_element_as_the_root() -> None:
    [model] = parse_ddf(b"<Object><Name>Solo</Name><ObjectID>33030</ObjectID></Object>")
    assert model.name == "Solo"


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("String", ResourceType.STRING),
        ("Integer", ResourceType.INTEGER),
        ("Unsigned Integer", ResourceType.UNSIGNED_INTEGER),
        ("unsignedInteger", ResourceType.UNSIGNED_INTEGER),
        ("Float", ResourceType.FLOAT),
        ("Boolean", ResourceType.BOOLEAN),
        ("Opaque", ResourceType.OPAQUE),
        ("Time", ResourceType.TIME),
        ("Objlnk", ResourceType.OBJLNK),
        ("ObjLnk", ResourceType.OBJLNK),
        ("Corelnk", ResourceType.CORELNK),
    ],
)
def test_type_spellings(spelling: str, expected: ResourceType) -> None:
    [model] = parse_ddf(minimal(items=item(rtype=spelling)))
    assert model.resources[0].type is expected


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("R", Operations.R),
        ("W", Operations.W),
        ("RW", Operations.RW),
        ("WR", Operations.RW),
        ("E", Operations.E),
        ("", Operations.NONE),
    ],
)
def test_operation_spellings(spelling: str, expected: Operations) -> None:
    [model] = parse_ddf(minimal(items=item(ops=spelling, rtype="Integer")))
    assert model.resources[0].operations == expected


def test_a_readable_resource_without_type_is_opaque() -> None:
    # The OMA registry itself publishes such a file; its values can still be passed on as bytes.
    [model] = parse_ddf(minimal(items=item(ops="R", rtype="")))
    assert model.resources[0].type is ResourceType.OPAQUE


# --- what is refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["entities", "external-dtd"])
def test_a_doctype_is_refused(data: bytes) -> None:
    with pytest.raises(ModelError, match="DOCTYPE") as caught:
        parse_ddf(data, "laughs.xml")
    assert caught.value.source == "laughs.xml"
    assert str(caught.value).startswith("laughs.xml: ")


def test_a_doctype_is_refused_whatever_the_encoding() -> None:
    with pytest.raises(ModelError, match="DOCTYPE"):
        parse_ddf(codecs.BOM_UTF16_LE + BILLION_LAUGHS.decode().encode("utf-16-le"))
    with pytest.raises(ModelError, match="DOCTYPE"):
        parse_ddf(BILLION_LAUGHS.replace(b"<!DOCTYPE", b"<!doctype"))


def test_an_entity_declaration_alone_is_refused() -> None:
    with pytest.raises(ModelError, match="ENTITY"):
        parse_ddf(b'<LWM2M><!ENTITY x "y"></LWM2M>')


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not well-formed XML"),
        (b"<LWM2M><Object><Name>Cut", "not well-formed XML"),
        (b"\x00\x01binary", "not well-formed XML"),
        (b"<LWM2M/>", "no <Object> element under <LWM2M>"),
        (b"<DDFList><Item/></DDFList>", "no <Object> element under <DDFList>"),
        (b"<LWM2M><Object><Name>x</Name></Object></LWM2M>", "has no <ObjectID>"),
        (minimal(oid="abc"), "<ObjectID> 'abc' is not a number"),
        (minimal(oid="-1"), "is not a number"),
        (minimal(oid="70000"), "out of range 0..65535"),
        (b"<LWM2M><Object><ObjectID>33040</ObjectID></Object></LWM2M>", "object 33040: <Name> is missing"),
        (minimal(extra="<ObjectVersion>one</ObjectVersion>"), "<ObjectVersion> 'one' is not a version"),
        (minimal(extra="<LWM2MVersion>1</LWM2MVersion>"), "<LWM2MVersion> '1' is not a version"),
        (minimal(extra="<MultipleInstances>Many</MultipleInstances>"), "neither Multiple nor Single"),
        (minimal(extra="<Mandatory>Yes</Mandatory>"), "neither Mandatory nor Optional"),
        (minimal(items="<Item><Name>x</Name></Item>"), "an <Item> has no ID"),
        (minimal(items=item(rid="x")), "resource ID 'x' is not a number"),
        (minimal(items=item() + item()), "resource 0 is defined twice"),
        (minimal(items="<Item ID='3'><Type>Integer</Type></Item>"), "resource 3: <Name> is missing"),
        (minimal(items=item(rtype="Double")), "resource 0: <Type> 'Double' is not an LwM2M data type"),
        (minimal(items=item(ops="RX")), "<Operations> 'RX' is not one of"),
        (minimal(items=item(extra="<Mandatory>Sometimes</Mandatory>")), "resource 0: <Mandatory>"),
        (b"<?xml version='1.0' encoding='klingon'?><LWM2M/>", "unknown character encoding 'klingon'"),
        (b"<LWM2M><Object><Name>\xff\xfe\xfa</Name></Object></LWM2M>", "not valid utf-8 text at byte 21"),
    ],
)
def test_broken_documents_name_the_file_and_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_ddf(data, "sensors/broken.xml")
    assert caught.value.source == "sensors/broken.xml"
    assert problem in caught.value.problem
    assert str(caught.value) == f"sensors/broken.xml: {caught.value.problem}"


def test_one_bad_object_fails_the_whole_file() -> None:
    data = (
        b"<LWM2M><Object><Name>ok</Name><ObjectID>1</ObjectID></Object>"
        b"<Object><Name>bad</Name></Object></LWM2M>"
    )
    with pytest.raises(ModelError, match="no <ObjectID>"):
        parse_ddf(data)


def test_an_oversized_document_is_refused_unparsed() -> None:
    with pytest.raises(ModelError, match="larger than"):
        parse_ddf(b" " * (MAX_DDF_BYTES + 1))


# --- files ----------------------------------------------------------------------------------------------


def test_load_a_file(tmp_path: Path) -> None:
    path = tmp_path / "hive.xml"
    path.write_bytes(HIVE_SCALE)
    [model] = load_ddf(path)
    assert model.id == 33001


def test_a_broken_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_bytes(b"<LWM2M><Object>")
    with pytest.raises(ModelError) as caught:
        load_ddf(path)
    assert caught.value.source == str(path)
    assert str(path) in str(caught.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read the file") as caught:
        load_ddf(tmp_path / "absent.xml")
    assert caught.value.source.endswith("absent.xml")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read the file"):
        load_ddf(tmp_path)


def test_an_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.xml"
    path.write_bytes(b"<LWM2M>" + b" " * MAX_DDF_BYTES + b"</LWM2M>")
    with pytest.raises(ModelError, match="larger than"):
        load_ddf(path)


# --- every built-in model survives a trip through DDF ---------------------------------------------------


def to_ddf(model: ObjectModel) -> bytes:
    """Writes ``model`` as a DDF document (the tests' own writer, to check the reader against)."""

    def esc(text: str) -> str:
        return xml.sax.saxutils.escape(text)

    def ops(operations: Operations) -> str:
        letters = (("R", Operations.R), ("W", Operations.W), ("E", Operations.E))
        return "".join(letter for letter, flag in letters if flag in operations)

    items = "".join(
        f"<Item ID='{r.id}'><Name>{esc(r.name)}</Name><Operations>{ops(r.operations)}</Operations>"
        f"<MultipleInstances>{'Multiple' if r.multiple else 'Single'}</MultipleInstances>"
        f"<Mandatory>{'Mandatory' if r.mandatory else 'Optional'}</Mandatory>"
        f"<Type>{'' if r.type is ResourceType.NONE else r.type.value}</Type>"
        f"<RangeEnumeration>{esc(r.range)}</RangeEnumeration><Units>{esc(r.units)}</Units>"
        f"<Description>{esc(r.description)}</Description></Item>"
        for r in model.resources.values()
    )
    return (
        f"<?xml version='1.0' encoding='UTF-8'?><LWM2M><Object ObjectType='MODefinition'>"
        f"<Name>{esc(model.name)}</Name><Description1>{esc(model.description)}</Description1>"
        f"<ObjectID>{model.id}</ObjectID><ObjectURN>{model.urn}</ObjectURN>"
        f"<LWM2MVersion>{model.lwm2m_version}</LWM2MVersion><ObjectVersion>{model.version}</ObjectVersion>"
        f"<MultipleInstances>{'Multiple' if model.multiple else 'Single'}</MultipleInstances>"
        f"<Mandatory>{'Mandatory' if model.mandatory else 'Optional'}</Mandatory>"
        f"<Resources>{items}</Resources></Object></LWM2M>"
    ).encode()


@pytest.mark.parametrize("model", BUILTIN_MODELS, ids=lambda m: f"{m.id}-v{m.version}")
def test_builtin_models_round_trip_through_ddf(model: ObjectModel) -> None:
    assert parse_ddf(to_ddf(model)) == [model]


# --- fuzz: anything parses or is a ModelError -----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_model_error(data: bytes) -> None:
    try:
        parse_ddf(data, "fuzz.xml")
    except ModelError as exc:
        assert exc.source == "fuzz.xml"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_documents_parse_or_raise_model_error(data: st.DataObject) -> None:
    document = bytearray(HIVE_SCALE)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(document) - 1))
        document[position] = data.draw(st.integers(0, 255))
    try:
        models = parse_ddf(bytes(document), "fuzz.xml")
    except ModelError as exc:
        assert exc.source == "fuzz.xml"
    else:
        assert all(isinstance(m, ObjectModel) for m in models)
