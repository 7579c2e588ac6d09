"""LwM2mPath: parsing, the ThingsBoard versioned form, structure, ordering, and rejection of bad text."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.lwm2m.path import ROOT, LwM2mPath, PathError

ids = st.integers(0, 65535)
instance_ids = st.integers(0, 65534)
paths = st.one_of(
    st.just(()),
    st.tuples(ids),
    st.tuples(ids, instance_ids),
    st.tuples(ids, instance_ids, ids),
    st.tuples(ids, instance_ids, ids, ids),
).map(lambda t: LwM2mPath(*t))


@pytest.mark.parametrize(
    ("text", "ids"),
    [("/", ()), ("/3", (3,)), ("/3/0", (3, 0)), ("/3/0/9", (3, 0, 9)), ("/3/0/7/1", (3, 0, 7, 1)),
     ("/65535/65534/65535/65535", (65535, 65534, 65535, 65535))],
)
def test_parse_levels(text: str, ids: tuple[int, ...]) -> None:
    path = LwM2mPath.parse(text)
    assert path.ids == ids
    assert path.depth == len(ids)
    assert str(path) == text
    assert path == LwM2mPath(*ids)


def test_properties() -> None:
    p = LwM2mPath.parse("/3/0/7/1")
    assert (p.object_id, p.instance_id, p.resource_id, p.resource_instance_id) == (3, 0, 7, 1)
    assert p.is_resource_instance and not p.is_resource
    r = p.parent
    assert r.is_resource and r == LwM2mPath(3, 0, 7)
    assert r.parent.is_object_instance and r.parent.parent.is_object and r.parent.parent.parent.is_root
    assert ROOT.object_id is None and ROOT.is_root and str(ROOT) == "/"
    assert LwM2mPath(3).instance_id is None and LwM2mPath(3, 0).resource_id is None


def test_child_and_startswith() -> None:
    assert LwM2mPath(3).child(0, 9) == LwM2mPath(3, 0, 9)
    assert ROOT.child(3) == LwM2mPath(3)
    assert LwM2mPath(3, 0, 9).startswith(LwM2mPath(3, 0))
    assert LwM2mPath(3, 0, 9).startswith(LwM2mPath(3, 0, 9))
    assert LwM2mPath(3, 0, 9).startswith(ROOT)
    assert not LwM2mPath(3, 0, 9).startswith(LwM2mPath(3, 1))
    assert not LwM2mPath(3, 0).startswith(LwM2mPath(3, 0, 9))
    assert not LwM2mPath(30, 0).startswith(LwM2mPath(3))  # ids, not text prefixes
    with pytest.raises(PathError):
        LwM2mPath(3, 0, 7, 1).child(2)
    with pytest.raises(PathError):
        LwM2mPath(3).child(65535)  # reserved instance id
    with pytest.raises(PathError):
        _ = ROOT.parent


def test_ordering_and_hashing() -> None:
    texts = ["/3/1", "/3/0/0", "/", "/3", "/3/0", "/2/5", "/3/0/7/1", "/3/0/7"]
    ordered = sorted(LwM2mPath.parse(t) for t in texts)
    assert [str(p) for p in ordered] == ["/", "/2/5", "/3", "/3/0", "/3/0/0", "/3/0/7", "/3/0/7/1", "/3/1"]
    assert len({LwM2mPath(3, 0), LwM2mPath.parse("/3/0"), LwM2mPath(3, 0)}) == 1
    assert {LwM2mPath(3, 0, 9): "battery"}[LwM2mPath.parse("/3/0/9")] == "battery"
    assert LwM2mPath(3) != (3,)


def test_immutable() -> None:
    p = LwM2mPath(3, 0)
    with pytest.raises(AttributeError):
        p._ids = (4,)
    with pytest.raises(AttributeError):
        p.foo = 1
    assert pickle.loads(pickle.dumps(p)) == p


@pytest.mark.parametrize(
    ("text", "version", "ids"),
    [("/3_1.2/0/9", "1.2", (3, 0, 9)), ("/3303_1.1/0/5700", "1.1", (3303, 0, 5700)),
     ("/3_1.2", "1.2", (3,)), ("/19_1.1/0/2", "1.1", (19, 0, 2)), ("/3/0/9", None, (3, 0, 9)),
     ("/", None, ())],
)
def test_parse_versioned(text: str, version: str | None, ids: tuple[int, ...]) -> None:
    assert LwM2mPath.parse_versioned(text) == (LwM2mPath(*ids), version)


@pytest.mark.parametrize(
    "text",
    ["/3_/0/9", "/3_1/0/9", "/3_1.x/0/9", "/3_v1.2/0", "/_1.2/0", "/3/0_1.2/9", "3_1.2/0", "/3_1.2.3/0"],
)
def test_parse_versioned_rejects(text: str) -> None:
    with pytest.raises(PathError):
        LwM2mPath.parse_versioned(text)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "must start with '/'"),
        ("3/0/9", "must start with '/'"),
        ("/3//9", "empty segment"),
        ("/3/0/", "empty segment"),
        ("//", "empty segment"),
        ("/3/0/9/1/2", "more than 4"),
        ("/65536", "65536"),
        ("/3/65535", "reserved"),
        ("/3/-1", "'-1' is not a number"),
        ("/3/+1", "'+1'"),
        ("/3/ 1", "' 1'"),
        ("/3/0x1", "'0x1'"),
        ("/3/1_0", "'1_0'"),
        ("/3/٣", "'٣'"),  # an Arabic-Indic digit: int() would accept it
        ("/3_1.2/0/9", "'3_1.2'"),  # versioned form only through parse_versioned
        ("/3/" + "9" * 5000, "not a number"),
    ],
)
def test_parse_rejects_with_the_bad_text(text: str, complaint: str) -> None:
    with pytest.raises(PathError) as info:
        LwM2mPath.parse(text)
    assert complaint in str(info.value)


@pytest.mark.parametrize("ids", [(-1,), (65536,), (3, 65535), (1, 2, 3, 4, 5), (True,), (1.0,)])
def test_constructor_rejects(ids: tuple[object, ...]) -> None:
    with pytest.raises(PathError):
        LwM2mPath(*ids)  # type: ignore[arg-type]


def test_non_canonical_text_still_prints_canonically() -> None:
    p = LwM2mPath.parse("/03/00")
    assert p == LwM2mPath(3, 0) and str(p) == "/3/0"


def test_parse_rejects_non_text() -> None:
    with pytest.raises(PathError):
        LwM2mPath.parse(b"/3/0")  # type: ignore[arg-type]


@given(paths)
def test_str_round_trip(path: LwM2mPath) -> None:
    assert LwM2mPath.parse(str(path)) == path
    assert LwM2mPath.parse_versioned(str(path)) == (path, None)


@given(paths, paths)
def test_order_matches_id_tuples(a: LwM2mPath, b: LwM2mPath) -> None:
    assert (a < b) == (a.ids < b.ids)
    assert (a <= b) == (a.ids <= b.ids)
    assert a.startswith(b) == (a.ids[: b.depth] == b.ids)


@given(st.text(max_size=30))
def test_parse_raises_only_path_error(text: str) -> None:
    try:
        LwM2mPath.parse(text)
        LwM2mPath.parse_versioned(text)
    except PathError:
        pass
