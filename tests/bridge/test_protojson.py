"""The bridge's compiled proto3 JSON mapping (agentmesh.bridge.protojson) against json_format itself.

Whatever ``parse_into`` accepts, ``json_format.ParseDict`` turns into the same message; whatever it
declines leaves the message empty (json_format then answers, errors and all). Whatever ``to_dict``
writes, ``json_format.MessageToDict`` writes the same, member order included. The documents are drawn
along the probe's message types (every proto3 JSON type: scalars of every width, enums, maps, oneofs,
optional fields, recursion, well-known types), with values of the right type, of the wrong type, out of
range, null, and names given as the JSON name, the proto name, both, or unknown.
"""

from __future__ import annotations

import base64
import copy
import json
import math
from typing import Any

import pytest
from bridgekit import probe_modules
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from properties import profiles, run

from agentmesh.bridge import protojson
from agentmesh.bridge.checks import MAX_DEPTH, check_request
from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.transcode import build_request, parse_json, to_json
from agentmesh.v1 import agent_pb2

PROFILES = profiles(300, 3000)
F = FieldDescriptor
ODD = st.sampled_from([None, True, 1, -1, 1.0, 1.5, "1", " 1", "1_0", "x", "\ud800x", "NaN", [], {}, [None],
                       {"a": 1}, 2 ** 31, 2 ** 63, -(2 ** 64), float("inf"), float("nan")])
INT_RANGES = {F.CPPTYPE_INT32: (-(2 ** 31), 2 ** 31 - 1), F.CPPTYPE_UINT32: (0, 2 ** 32 - 1),
              F.CPPTYPE_INT64: (-(2 ** 63), 2 ** 63 - 1), F.CPPTYPE_UINT64: (0, 2 ** 64 - 1)}


def _odd_types() -> dict[str, type[Message]]:
    """Message types protoc accepts that the mesh's own protos do not use: a field whose JSON name is another
    field's proto name, an enum with aliases, a field named like a message method, proto2 with JSON names
    that clash with proto names (protoc only warns), a type in a file named like the wrappers' file."""
    T, L = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    pool = descriptor_pool.DescriptorPool()
    three = descriptor_pb2.FileDescriptorProto(name="odd3.proto", package="odd", syntax="proto3")
    swap = three.message_type.add(name="Swapped")
    swap.field.add(name="x", number=1, type=T.TYPE_STRING, label=L, json_name="y")
    swap.field.add(name="y", number=2, type=T.TYPE_INT32, label=L, json_name="z")
    enum = three.enum_type.add(name="Aliased", options=descriptor_pb2.EnumOptions(allow_alias=True))
    for name, number in (("A0", 0), ("A1", 1), ("AONE", 1), ("A2", 2)):
        enum.value.add(name=name, number=number)
    aliased = three.message_type.add(name="WithAlias")
    aliased.field.add(name="e", number=1, type=T.TYPE_ENUM, type_name=".odd.Aliased", label=L)
    aliased.field.add(name="es", number=2, type=T.TYPE_ENUM, type_name=".odd.Aliased",
                      label=T.LABEL_REPEATED)
    clear = three.message_type.add(name="Methods")
    clear.field.add(name="Clear", number=1, type=T.TYPE_STRING, label=L)
    two = descriptor_pb2.FileDescriptorProto(name="odd2.proto", package="odd2", syntax="proto2",
                                             dependency=["odd3.proto"])
    clash = two.message_type.add(name="Clash")
    clash.field.add(name="k", number=1, type=T.TYPE_ENUM, type_name=".odd.Aliased", label=L, json_name="q")
    clash.field.add(name="other", number=2, type=T.TYPE_STRING, label=L, json_name="k")
    floats = two.message_type.add(name="FloatClash")
    floats.field.add(name="k", number=1, type=T.TYPE_FLOAT, label=L, json_name="q")
    floats.field.add(name="other", number=2, type=T.TYPE_DOUBLE, label=L, json_name="k")
    wrappers = descriptor_pb2.FileDescriptorProto(name="google/protobuf/wrappers.proto", package="notgoogle",
                                                  syntax="proto3")
    wrapped = wrappers.message_type.add(name="W")
    wrapped.field.add(name="value", number=1, type=T.TYPE_STRING, label=L)
    outer = wrappers.message_type.add(name="Outer")
    outer.field.add(name="w", number=1, type=T.TYPE_MESSAGE, type_name=".notgoogle.W", label=L)
    legacy = three.message_type.add(name="Legacy",
                                    options=descriptor_pb2.MessageOptions(deprecated_legacy_json_field_conflicts=True))
    legacy.field.add(name="foo_bar", number=1, type=T.TYPE_INT32, label=L)  # both named fooBar in JSON
    legacy.field.add(name="fooBar", number=2, type=T.TYPE_ENUM, type_name=".odd.Aliased", label=L)
    named = three.message_type.add(name="Descriptor")
    named.field.add(name="DESCRIPTOR", number=1, type=T.TYPE_STRING, label=L)
    for file in (three, two, wrappers):
        pool.Add(file)
    names = ["odd.Swapped", "odd.WithAlias", "odd.Methods", "odd2.Clash", "odd2.FloatClash", "notgoogle.Outer",
             "odd.Legacy", "odd.Descriptor"]
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}


ODD_TYPES = _odd_types()


def messages_under_test() -> list[type[Message]]:
    pb, _ = probe_modules()
    return [pb.Everything, pb.EchoRequest, pb.EchoReply, pb.GetRequest, pb.Inner, agent_pb2.Task,
            agent_pb2.TaskResult, agent_pb2.TaskEvent, agent_pb2.Part, *ODD_TYPES.values()]


def scalar(field: Any) -> st.SearchStrategy[Any]:
    cpp = field.cpp_type
    if cpp in INT_RANGES:
        low, high = INT_RANGES[cpp]
        return st.integers(low, high) | st.integers(low, high).map(str) | st.sampled_from([low - 1, high + 1])
    if cpp == F.CPPTYPE_DOUBLE or cpp == F.CPPTYPE_FLOAT:
        return st.floats() | st.integers(-(2 ** 60), 2 ** 60) | st.sampled_from(["NaN", "Infinity", "-1.5", "1e40"])
    if cpp == F.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == F.CPPTYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        return st.sampled_from(names) | st.integers(-3, 9) | st.just("NOT_A_VALUE")
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=4)
    return st.text(max_size=8) | st.sampled_from(["\ud800", "a\udfff", "\U0001f600", "\u00e9"])


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nine in ten a value of the field's type, else an odd one (so many documents are valid throughout)."""
    return st.integers(0, 9).flatmap(lambda i: ODD if i == 0 else valid)


def value(field: Any, depth: int, repeated_ok: bool = True) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_f, val_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        keys = st.text(max_size=4) if key_f.type == F.TYPE_STRING else \
            st.integers(-3, 3).map(str) | st.sampled_from(["true", "false", "x"])
        return mostly(st.dictionaries(keys, value(val_f, depth, False), max_size=3))
    if field.is_repeated and repeated_ok:
        return mostly(st.lists(value(field, depth, False), max_size=3))
    if field.message_type is not None:
        if field.message_type.full_name.startswith("google.protobuf."):
            return ODD | st.sampled_from(["2020-01-01T00:00:00Z", "1.5s", "a.b", {"k": [1, "x", None]}, 5])
        return mostly(doc_of(field.message_type, depth + 1)) if depth < 4 else ODD
    return mostly(scalar(field))


@st.composite
def doc_of(draw: st.DrawFn, desc: Any, depth: int = 0) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for field in draw(st.lists(st.sampled_from(list(desc.fields)), max_size=5, unique_by=lambda f: f.number)) \
            if desc.fields else []:
        for name in draw(st.sampled_from([[field.json_name], [field.name], [field.json_name, field.name]])):
            doc[name] = draw(value(field, depth))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["unknown", "[ext]", "@type", "choice"]))] = 1
    return doc


def documents() -> st.SearchStrategy[tuple[type[Message], dict[str, Any]]]:
    return st.sampled_from(messages_under_test()).flatmap(lambda m: st.tuples(st.just(m), doc_of(m.DESCRIPTOR)))


def reference(cls: type[Message], doc: dict[str, Any]) -> Message | Exception:
    try:
        return json_format.ParseDict(doc, cls(), max_recursion_depth=MAX_DEPTH)
    except Exception as e:  # what json_format refuses (ParseError, or a bare ValueError/TypeError of its own)
        return e


def same(a: Message, b: Message) -> bool:
    return a == b and a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def written(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_what_parse_into_accepts_json_format_reads_the_same(profile: Any) -> None:
    def check(example: tuple[type[Message], dict[str, Any]]) -> None:
        cls, doc = example
        expected = reference(cls, doc)
        got = cls()
        if protojson.parse_into(doc, got, MAX_DEPTH):
            assert not isinstance(expected, Exception), f"accepted what json_format refuses: {expected!r}"
            assert same(got, expected)
            before = copy.deepcopy(doc)  # build_request then skips check_request: it must pass, changing nothing
            check_request(doc, cls.DESCRIPTOR)
            assert written(doc) == written(before)
        else:
            assert got.ListFields() == [], "a declined document leaves nothing behind"

    run(profile, documents(), check)


@pytest.mark.parametrize("profile", PROFILES)
def test_what_to_dict_writes_json_format_writes_the_same(profile: Any) -> None:
    def check(example: tuple[type[Message], dict[str, Any]]) -> None:
        cls, doc = example
        message = reference(cls, doc)
        if isinstance(message, Exception):
            return
        mine = protojson.to_dict(message)
        if mine is not None:
            assert written(mine) == written(json_format.MessageToDict(message))  # the same members, same order

    run(profile, documents(), check)


# ---------------------------------------------------------------------- the fast path is taken where it should be
def test_the_bridge_benchmark_request_and_answer_take_the_fast_path() -> None:
    doc = {"id": "bench-1", "input": [{"text": "hello"}], "metadata": {"k": "v"}, "parentTaskId": "p"}
    task = agent_pb2.Task()
    assert protojson.parse_into(doc, task, MAX_DEPTH)
    assert same(task, json_format.ParseDict(doc, agent_pb2.Task()))
    result = agent_pb2.TaskResult(task_id="t", status=agent_pb2.TASK_STATUS_COMPLETED,
                                  output=[agent_pb2.Part(text="hi", mime_type="text/plain")], metadata={"a": "b"},
                                  error=agent_pb2.TaskError(code="c"))
    assert protojson.to_dict(result) == json_format.MessageToDict(result)
    assert list(protojson.to_dict(result) or {}) == ["taskId", "status", "output", "error", "metadata"]


def test_every_probe_type_it_writes_matches_json_format() -> None:
    pb, _ = probe_modules()
    inner = pb.Inner(note="n", child=pb.Inner(nums=[1, -2]), nums=[2 ** 31 - 1])
    message = pb.Everything(text="t\u00e9", i32=-5, i64=2 ** 62, u64=2 ** 64 - 1, dbl=0.1, flag=True, raw=b"\x00\xff",
                            color=pb.COLOR_BLUE, tags=["a", ""], inners={"x": inner}, left="l", opt="",
                            colors=[pb.COLOR_RED, 7], s64=-(2 ** 63), f32=2 ** 32 - 1, inner=inner)
    assert written(protojson.to_dict(message)) == written(json_format.MessageToDict(message))
    for special in (math.inf, -math.inf, math.nan):
        assert written(protojson.to_dict(pb.Everything(dbl=special))) == \
            written(json_format.MessageToDict(pb.Everything(dbl=special)))


@pytest.mark.parametrize("doc, why", [
    ({"text": None}, "null"),
    ({"i64": "5"}, "a 64-bit integer as a string"),
    ({"i32": 2 ** 31}, "out of range"),
    ({"i32": True}, "a bool for an integer"),
    ({"flt": 1.5}, "a 32-bit float"),
    ({"raw": "AA=="}, "bytes"),
    ({"text": "\ud800"}, "a lone surrogate"),
    ({"color": "NOT_A_COLOR"}, "an unknown enum name"),
    ({"color": 1}, "an enum by number"),
    ({"left": "a", "right": 1}, "two members of one oneof"),
    ({"opt": "a", "opt2": 1}, "an unknown member"),
    ({"at": "2020-01-01T00:00:00Z"}, "a well-known type"),
    ({"byNumber": {"1": "a"}}, "a map with integer keys"),
    ({"inner": {"child": {"child": {"note": 5}}}}, "a wrong type deep down"),
])
def test_it_declines_and_json_format_answers(doc: dict[str, Any], why: str) -> None:
    pb, _ = probe_modules()
    message = pb.Everything()
    assert not protojson.parse_into(doc, message, MAX_DEPTH), why
    assert message.ListFields() == []


def test_nesting_at_the_limit_is_left_to_json_format() -> None:
    pb, _ = probe_modules()
    doc: dict[str, Any] = {"note": "deep"}
    for _ in range(MAX_DEPTH + 2):
        doc = {"child": doc}
    assert not protojson.parse_into(doc, pb.Inner(), MAX_DEPTH)
    shallow = {"child": {"child": {"note": "x"}}}
    assert protojson.parse_into(shallow, pb.Inner(), MAX_DEPTH)


def test_the_bridge_answers_as_before_on_either_path() -> None:
    """build_request / to_json give json_format's message on the fast path and its error off it."""
    pb, _ = probe_modules()
    fast = parse_json(b'{"name":"n","payload":{"text":"t","i32":3,"tags":["a"],"inner":{"note":"x"}}}')
    assert same(build_request(pb.EchoRequest(), None, fast, {}), json_format.ParseDict(fast, pb.EchoRequest()))
    slow = parse_json(b'{"name":"n","payload":{"i64":"12","at":"2020-01-01T00:00:00Z"}}')
    assert same(build_request(pb.EchoRequest(), None, slow, {}), json_format.ParseDict(slow, pb.EchoRequest()))
    reply = pb.EchoReply(name="n", payload=pb.Everything(i64=12, dbl=1.5), metadata={"k": "v"})
    assert to_json(reply) == json.dumps(json_format.MessageToDict(reply), separators=(",", ":")).encode()


# ---------------------------------------------------------------------- what a review found (each failed before)
def test_a_json_name_wins_over_another_fields_proto_name() -> None:
    swapped = ODD_TYPES["odd.Swapped"]
    got = swapped()
    assert protojson.parse_into({"y": "s"}, got, MAX_DEPTH)
    assert same(got, json_format.ParseDict({"y": "s"}, swapped()))  # "y" is x's JSON name: x is set, not y
    assert got.x == "s" and got.y == 0
    assert not protojson.parse_into({"y": 5}, swapped(), MAX_DEPTH)  # json_format refuses a number for x
    with pytest.raises(HttpError) as refused:
        build_request(swapped(), None, {"y": 5}, {})
    assert refused.value.status == 400


def test_an_aliased_enum_value_is_written_by_its_first_name() -> None:
    aliased = ODD_TYPES["odd.WithAlias"]
    message = aliased(e=1, es=[1, 2, 1])
    assert protojson.to_dict(message) == json_format.MessageToDict(message) == {"e": "A1", "es": ["A1", "A2", "A1"]}


def test_a_field_named_like_a_message_method_does_not_break_a_decline() -> None:
    methods = ODD_TYPES["odd.Methods"]
    message = methods()
    assert not protojson.parse_into({"nope": 1}, message, MAX_DEPTH)  # declined, the message cleared: no raise
    with pytest.raises(HttpError) as refused:
        build_request(methods(), None, {"Clear": 1}, {})
    assert refused.value.status == 400
    assert same(build_request(methods(), None, {"Clear": "x"}, {}), json_format.ParseDict({"Clear": "x"}, methods()))


def test_check_request_reads_a_member_as_json_format_does() -> None:
    """A JSON name that is another field's proto name (proto2): check_request judged the other field."""
    clash, floats = ODD_TYPES["odd2.Clash"], ODD_TYPES["odd2.FloatClash"]
    check_request({"k": "zzz"}, clash.DESCRIPTOR)  # raised: "zzz" judged as a value of the enum k
    big = {"k": 3.4028235e38}
    check_request(big, floats.DESCRIPTOR)
    assert big == {"k": 3.4028235e38}  # was rewritten to FLT_MAX as if for the float k
    assert build_request(clash(), None, {"k": "zzz"}, {}).other == "zzz"
    assert build_request(floats(), None, {"k": 3.4028235e38}, {}).other == 3.4028235e38


def test_of_two_fields_with_one_json_name_both_read_the_last_as_json_format_does() -> None:
    """A legacy message (deprecated_legacy_json_field_conflicts) whose two fields are both fooBar in JSON."""
    legacy = ODD_TYPES["odd.Legacy"]
    assert protojson.parse_into({"fooBar": "A1"}, got := legacy(), MAX_DEPTH)
    assert same(got, json_format.ParseDict({"fooBar": "A1"}, legacy()))
    check_request({"fooBar": "A1"}, legacy.DESCRIPTOR)  # raised: judged as the int32 foo_bar
    for refused in (True, "1", 1.5):  # the enum's: refused before the change, and again now
        with pytest.raises(HttpError):
            build_request(legacy(), None, {"fooBar": refused}, {})


def test_a_field_named_descriptor_is_still_a_400() -> None:
    named = ODD_TYPES["odd.Descriptor"]
    assert not protojson.parse_into({}, named(), MAX_DEPTH)
    with pytest.raises(HttpError) as refused:
        build_request(named(), None, {}, {})
    assert refused.value.status == 400
    assert protojson.to_dict(named()) is None  # json_format's to fail on, as before


def test_a_type_in_a_file_named_like_the_wrappers_file_is_json_formats() -> None:
    outer = ODD_TYPES["notgoogle.Outer"]
    assert not protojson.parse_into({"w": {"value": "abc"}}, outer(), MAX_DEPTH)
    assert protojson.to_dict(outer(w={"value": "abc"})) is None
