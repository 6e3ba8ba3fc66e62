"""protocol.codec: every message survives a round trip, and every bad input is a ProtocolError."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.base import Message
from protocol.cards import NodeCard, PlacedKeys
from protocol.codec import MAX_DEPTH, MAX_MESSAGE_BYTES, decode, encode
from protocol.envconfig import ConfigVars
from protocol.errors import (
    MalformedMessageError,
    MeshError,
    ProtocolError,
    UnknownVersionError,
)
from protocol.messages import (
    MESSAGE_TYPES,
    Allocation,
    DetectionHold,
    Event,
    FailureRecord,
    FailureState,
    HeartbeatMark,
    InstanceState,
    InstanceStatus,
    JetStreamServers,
    Lease,
    LivenessBeat,
    NodeStatus,
    Notification,
    PlacementRecord,
    PublishedSpec,
    RestartRequest,
    ServerAddress,
    Snapshot,
    SnapshotIndex,
    Suspicion,
    Verdict,
)
from protocol.secrets import MeshKey, SealedSecret, SecretScope, SecretValue

SAMPLES: list[Message] = [
    PublishedSpec(
        spec={"projects": [{"name": "hostomatic", "servers": 3, "ratio": 0.5, "on": True}]},
        published_by="operator@laptop",
        published_at=1_700_000_000.25,
    ),
    Allocation(
        project="hostomatic",
        env="prod",
        service="backend",
        generation=4,
        droplets=("hostomatic-web1", "hostomatic-web2"),
        port=8123,
        image="hostomatic/backend:abc123",
        command=None,
        memory_mb=512,
        env_vars={"PROJECT": "hostomatic", "ENVIRONMENT": "prod"},
    ),
    NodeStatus(
        droplet="master",
        address="10.0.0.2",
        incarnation=7,
        size="s-2vcpu-4gb",
        roles=("lb", "heartbeat"),
        instances=(
            InstanceStatus(
                project="hostomatic",
                env="uat",
                service="backend",
                state=InstanceState.RUNNING,
                healthy=True,
                restarts=0,
            ),
            InstanceStatus(
                project="hostomatic",
                env="test",
                service="redis",
                state=InstanceState.CRASHED,
                healthy=False,
                restarts=3,
                last_error="exit code 137",
            ),
        ),
        updated_at=1_700_000_001.0,
    ),
    LivenessBeat(droplet="master", incarnation=7, seq=42, sent_at=1_700_000_002.5),
    Lease(role="recovery", holder="hostomatic-web1", incarnation=2, acquired_at=12.0),
    Suspicion(target="hostomatic-web2", by="master", incarnation=1, verdict=Verdict.CONFIRM),
    FailureRecord(
        droplet="hostomatic-web2",
        confirmed_by=("master", "hostomatic-web1"),
        confirmed_at=1_700_000_003.0,
        state=FailureState.FENCED,
        fence=118,
    ),
    Event(
        name="failure_confirmed",
        actor="master",
        subject="hostomatic-web2",
        detail={"monitors": ["master", "hostomatic-web1"], "misses": 3, "raw": b"\x00"},
        fence=118,
        at=1_700_000_004.0,
    ),
    RestartRequest(
        project="hostomatic",
        env="prod",
        service="backend",
        count=3,
        requested_by="operator@laptop",
        requested_at=1_700_000_006.0,
    ),
    PlacementRecord(
        placement={"droplets": [{"name": "master", "size": "s-1vcpu-1gb"}], "instances": []},
        spec_revision=3,
        fence=12,
        written_at=1_700_000_006.0,
    ),
    JetStreamServers(
        epoch=2,
        servers=(
            ServerAddress(name="master", address="10.0.0.2"),
            ServerAddress(name="web1", address="10.0.0.3"),
            ServerAddress(name="web2", address="10.0.0.4"),
        ),
        fence=13,
    ),
    Notification(
        channel="email",
        purpose="heartbeat",
        subject="✅ Infrastructure OK - 14:30",
        text="All systems operational",
        html="<p>All systems operational</p>",
        created_at=1_700_000_007.0,
        fence=12,
    ),
    HeartbeatMark(purpose="heartbeat", sent_at=1_700_000_008.0, by="master", fence=13),
    SnapshotIndex(
        droplet="hostomatic-web2",
        snapshots=(
            Snapshot(
                id="7",
                name="hostomatic-web2-deploy-20261127-081500",
                droplet_id="3",
                created_at=1_700_000_003.5,
                generations={"hostomatic.prod.backend": 4},
                fence=119,
            ),
        ),
    ),
    ConfigVars(
        project="hostomatic",
        env="prod",
        values={"FEATURE_FLAG_X": "enabled", "API_RATE_LIMIT": "1000"},
        set_by="operator@laptop",
        set_at=1_700_000_004.0,
    ),
    DetectionHold(
        droplet="master",
        until=1_700_000_603.0,
        reason="agent upgrade",
        held_by="operator@laptop",
        held_at=1_700_000_003.0,
    ),
    SecretValue(
        name="api_key",
        scope=SecretScope.ENV,
        project="shop",
        env="prod",
        version=2,
        sealed="AQID",
        mesh_key="0123456789abcdef",
        set_by="operator@laptop",
        set_at=1_700_000_009.0,
    ),
    SealedSecret(
        droplet="shop-web1",
        name="api_key",
        project="shop",
        env="prod",
        source="value.env.shop.prod.api_key",
        version=2,
        sealed="AQID",
        key="fedcba9876543210",
        fence=31,
    ),
    MeshKey(public="AAAA", fingerprint="0123456789abcdef", created_by="master", created_at=1.5),
    NodeCard(droplet="web1", address="10.0.0.3", incarnation=1764800000, size="s-1vcpu-1gb"),
    PlacedKeys(droplet="web1", keys=("shop.prod.db", "shop.prod.web"), fence=12),
]


def wire(msg: Message) -> dict[str, Any]:
    """The decoded msgpack map that `encode` writes for `msg`, to be tampered with."""
    raw = msgpack.unpackb(encode(msg), raw=False)
    assert isinstance(raw, dict)
    return raw


def pack(raw: object) -> bytes:
    data = msgpack.packb(raw, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


HEARTBEAT = LivenessBeat(droplet="master", incarnation=1, seq=1, sent_at=1.0)
NODE = SAMPLES[2]
assert isinstance(NODE, NodeStatus)


# Round trips.


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).KIND)
def test_every_message_type_survives_a_round_trip(msg: Message) -> None:
    assert decode(encode(msg), type(msg)) == msg


def test_every_message_type_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    assert all(kind == cls.KIND for kind, cls in MESSAGE_TYPES.items())


def test_round_trip_restores_nested_dataclasses_enums_and_tuples() -> None:
    node = decode(encode(NODE), NodeStatus)
    assert isinstance(node.roles, tuple)
    assert isinstance(node.instances, tuple)
    assert isinstance(node.instances[1], InstanceStatus)
    assert node.instances[1].state is InstanceState.CRASHED


def test_encode_writes_a_map_with_version_kind_and_plain_values() -> None:
    raw = wire(NODE)
    assert raw["v"] == 1
    assert raw["kind"] == "node_status"
    assert raw["roles"] == ["lb", "heartbeat"]
    assert raw["instances"][0]["state"] == "running"
    assert raw["instances"][0]["last_error"] is None


def test_decode_accepts_an_integer_for_a_float_field() -> None:
    raw = wire(HEARTBEAT)
    raw["sent_at"] = 5
    heartbeat = decode(pack(raw), LivenessBeat)
    assert heartbeat.sent_at == 5.0
    assert isinstance(heartbeat.sent_at, float)


def test_decode_ignores_unknown_extra_fields() -> None:
    raw = wire(HEARTBEAT)
    raw["added_in_a_later_release"] = {"anything": [1, 2]}
    assert decode(pack(raw), LivenessBeat) == HEARTBEAT


def test_decode_fills_a_missing_field_that_has_a_default() -> None:
    raw = wire(SAMPLES[7])
    del raw["detail"], raw["fence"]
    event = decode(pack(raw), Event)
    assert (event.detail, event.fence) == ({}, None)


# Bytes that are not a message.


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x82\xa1v", b"\x01\x02", b"\xa2\xff\xfe"])
def test_decode_refuses_bytes_that_are_not_msgpack(data: bytes) -> None:
    with pytest.raises(MalformedMessageError, match=r"^decode heartbeat: not valid msgpack: "):
        decode(data, LivenessBeat)


def test_decode_refuses_a_map_with_non_string_keys() -> None:
    with pytest.raises(MalformedMessageError, match="not valid msgpack"):
        decode(pack({1: "x"}), LivenessBeat)


@pytest.mark.parametrize("value", [[1, 2], "heartbeat", 7, None])
def test_decode_refuses_a_message_that_is_not_a_map(value: object) -> None:
    with pytest.raises(MalformedMessageError, match="^decode heartbeat: expected a map, got "):
        decode(pack(value), LivenessBeat)


def test_decode_refuses_a_message_of_another_kind() -> None:
    with pytest.raises(MalformedMessageError) as caught:
        decode(encode(NODE), LivenessBeat)
    assert (
        str(caught.value) == "decode heartbeat: expected kind 'heartbeat', got kind 'node_status'"
    )


def test_decode_refuses_a_message_without_kind() -> None:
    raw = wire(HEARTBEAT)
    del raw["kind"]
    with pytest.raises(MalformedMessageError, match="expected kind 'heartbeat', got no kind"):
        decode(pack(raw), LivenessBeat)


def test_decode_refuses_a_message_without_schema_version() -> None:
    raw = wire(HEARTBEAT)
    del raw["v"]
    with pytest.raises(MalformedMessageError, match="missing schema version 'v'"):
        decode(pack(raw), LivenessBeat)


@pytest.mark.parametrize("version", [0, -1, "1", True, 1.0, [1]])
def test_decode_refuses_a_schema_version_that_is_not_a_positive_integer(version: object) -> None:
    raw = wire(HEARTBEAT)
    raw["v"] = version
    with pytest.raises(MalformedMessageError, match="'v' must be a positive integer"):
        decode(pack(raw), LivenessBeat)


def test_decode_refuses_a_message_larger_than_the_limit() -> None:
    data = pack({"v": 1, "kind": "heartbeat", "pad": "x" * MAX_MESSAGE_BYTES})
    with pytest.raises(MalformedMessageError, match="more than the 1048576 allowed"):
        decode(data, LivenessBeat)


def test_decode_refuses_deeply_nested_input_without_recursion_error() -> None:
    with pytest.raises(MalformedMessageError, match="not valid msgpack"):
        decode(b"\x91" * 100_000 + b"\x00", LivenessBeat)


@pytest.mark.parametrize("key", ["kind", "v"])
def test_decode_describes_a_deeply_nested_envelope_without_recursion_error(key: str) -> None:
    deep: object = "bottom"
    for _ in range(1000):
        deep = [deep]
    raw = {**wire(HEARTBEAT), key: deep}
    with pytest.raises(MalformedMessageError, match="an array"):
        decode(pack(raw), LivenessBeat)


def test_decode_refuses_plain_data_nested_deeper_than_the_limit() -> None:
    deep: object = "bottom"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    raw = wire(SAMPLES[7])
    raw["detail"] = {"deep": deep}
    with pytest.raises(MalformedMessageError, match=f"nested more than {MAX_DEPTH} levels deep"):
        decode(pack(raw), Event)


# Schema versions.


def test_decode_refuses_newer_schema_version() -> None:
    raw = wire(HEARTBEAT)
    raw["v"] = 7
    with pytest.raises(UnknownVersionError) as caught:
        decode(pack(raw), LivenessBeat)
    err = caught.value
    assert (err.kind, err.got, err.supported, err.newer) == ("heartbeat", 7, 1, True)
    assert str(err) == (
        "decode heartbeat: schema version 7 is newer than this agent understands (1); upgrade meshd"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Greeting(Message):
    """Version 2 renamed `name` to `who`; it has no upgrade hook."""

    KIND: ClassVar[str] = "greeting"
    VERSION: ClassVar[int] = 2

    who: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradableGreeting(Message):
    """Version 2 renamed `name` to `who`; version 1 messages are upgraded."""

    KIND: ClassVar[str] = "greeting"
    VERSION: ClassVar[int] = 2

    who: str

    @classmethod
    def upgrade(cls, version: int, fields: dict[str, Any]) -> dict[str, Any]:
        if version != 1:
            raise UnknownVersionError(cls.KIND, version, cls.VERSION)
        fields["who"] = fields.pop("name")
        return fields


def test_decode_refuses_older_schema_version_without_an_upgrade() -> None:
    data = pack({"v": 1, "kind": "greeting", "name": "web1"})
    with pytest.raises(UnknownVersionError) as caught:
        decode(data, Greeting)
    assert caught.value.newer is False
    assert str(caught.value) == (
        "decode greeting: schema version 1 is older than this agent understands (2) and cannot "
        "be upgraded; republish it with a current meshd"
    )


def test_decode_upgrades_older_schema_version_through_the_class_hook() -> None:
    data = pack({"v": 1, "kind": "greeting", "name": "web1"})
    assert decode(data, UpgradableGreeting) == UpgradableGreeting(who="web1")


def test_decode_reads_the_current_version_without_calling_the_upgrade_hook() -> None:
    data = encode(UpgradableGreeting(who="web1"))
    assert decode(data, UpgradableGreeting) == UpgradableGreeting(who="web1")


def test_decode_reports_a_failing_upgrade_as_a_malformed_message() -> None:
    data = pack({"v": 1, "kind": "greeting", "nom": "web1"})
    with pytest.raises(MalformedMessageError, match="cannot upgrade from schema version 1"):
        decode(data, UpgradableGreeting)


# Fields.


def test_decode_refuses_a_missing_required_field() -> None:
    raw = wire(HEARTBEAT)
    del raw["seq"]
    with pytest.raises(MalformedMessageError) as caught:
        decode(pack(raw), LivenessBeat)
    assert caught.value.field == "seq"
    assert str(caught.value) == "decode heartbeat: field 'seq': missing required field"


def test_decode_refuses_a_missing_field_of_a_nested_message() -> None:
    raw = wire(NODE)
    del raw["instances"][1]["healthy"]
    with pytest.raises(MalformedMessageError, match=r"field 'instances\[1\].healthy': missing"):
        decode(pack(raw), NodeStatus)


WRONG_TYPES: list[tuple[Message, str, object, str, str]] = [
    (HEARTBEAT, "droplet", 5, "droplet", "expected a string, got an integer"),
    (HEARTBEAT, "seq", "1", "seq", "expected an integer, got a string"),
    (HEARTBEAT, "seq", True, "seq", "expected an integer, got a boolean"),
    (HEARTBEAT, "seq", 1.0, "seq", "expected an integer, got a float"),
    (HEARTBEAT, "sent_at", "now", "sent_at", "expected a number, got a string"),
    (HEARTBEAT, "sent_at", math.nan, "sent_at", "expected a finite number, got nan"),
    (HEARTBEAT, "sent_at", math.inf, "sent_at", "expected a finite number, got inf"),
    (HEARTBEAT, "droplet", None, "droplet", "expected a string, got nil"),
    (SAMPLES[1], "port", "8000", "port", "expected an integer, got a string"),
    (SAMPLES[1], "droplets", "master", "droplets", "expected an array, got a string"),
    (SAMPLES[1], "droplets", ["master", 2], "droplets[1]", "expected a string, got an integer"),
    (SAMPLES[1], "env_vars", {"PORT": 80}, "env_vars['PORT']", "expected a string, got an"),
    (SAMPLES[1], "env_vars", ["PORT"], "env_vars", "expected a map, got an array"),
    (SAMPLES[3], "seq", b"1", "seq", "expected an integer, got binary data"),
    (SAMPLES[5], "verdict", "maybe", "verdict", "expected one of 'suspect', 'confirm', 'refute'"),
    (SAMPLES[5], "verdict", 1, "verdict", "expected one of 'suspect', 'confirm', 'refute'"),
    (SAMPLES[6], "state", ["fenced"], "state", "expected one of 'confirmed', 'fenced'"),
    (NODE, "instances", [{"x": 1}], "instances[0].project", "missing required field"),
    (NODE, "instances", ["running"], "instances[0]", "expected a map, got a string"),
    (SAMPLES[7], "detail", [], "detail", "expected a map, got an array"),
    (SAMPLES[7], "detail", {"at": msgpack.Timestamp(1)}, "detail['at']", "expected plain data"),
    (SAMPLES[7], "detail", {"x": msgpack.ExtType(5, b"")}, "detail['x']", "expected plain data"),
    (SAMPLES[0], "spec", {"a": {"b": {b"k": 1}}}, "spec['a']['b']", "map keys must be strings"),
]


@pytest.mark.parametrize(("msg", "name", "bad", "path", "reason"), WRONG_TYPES)
def test_decode_refuses_a_field_of_the_wrong_type(
    msg: Message, name: str, bad: object, path: str, reason: str
) -> None:
    raw = wire(msg)
    raw[name] = bad
    with pytest.raises(MalformedMessageError) as caught:
        decode(pack(raw), type(msg))
    assert caught.value.field == path
    assert caught.value.what == f"decode {type(msg).KIND}"
    assert str(caught.value).startswith(f"decode {type(msg).KIND}: field {path!r}: {reason}")


def test_decode_accepts_nil_for_an_optional_field_only() -> None:
    raw = wire(SAMPLES[1])
    raw["port"] = None
    assert decode(pack(raw), Allocation).port is None
    raw["memory_mb"] = None
    with pytest.raises(MalformedMessageError, match="'memory_mb': expected an integer, got nil"):
        decode(pack(raw), Allocation)


# Encoding invalid messages.


def test_encode_refuses_a_field_of_the_wrong_type() -> None:
    bad = LivenessBeat(droplet="master", incarnation=1, seq="one", sent_at=1.0)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError) as caught:
        encode(bad)
    assert str(caught.value) == "encode heartbeat: field 'seq': expected an integer, got a string"


def test_encode_refuses_a_non_finite_timestamp() -> None:
    with pytest.raises(MalformedMessageError, match="finite"):
        encode(dataclasses.replace(HEARTBEAT, sent_at=math.inf))


def test_encode_refuses_an_integer_that_does_not_fit_in_64_bits() -> None:
    with pytest.raises(MalformedMessageError, match="does not fit in 64 bits"):
        encode(dataclasses.replace(HEARTBEAT, seq=2**64))


def test_encode_refuses_a_detail_value_that_is_not_plain_data() -> None:
    event = dataclasses.replace(SAMPLES[7], detail={"when": {1, 2}})  # type: ignore[type-var]
    with pytest.raises(MalformedMessageError, match=r"field \"detail\['when'\]\": expected plain"):
        encode(event)


def test_encode_refuses_a_message_larger_than_the_limit() -> None:
    big = PublishedSpec(spec={"pad": "x" * MAX_MESSAGE_BYTES}, published_by="me", published_at=0)
    with pytest.raises(MalformedMessageError, match="^encode desired_state: message is"):
        encode(big)


def test_encode_accepts_enum_values_given_as_plain_strings() -> None:
    vote = Suspicion(target="a", by="b", incarnation=1, verdict="refute")  # type: ignore[arg-type]
    assert decode(encode(vote), Suspicion).verdict is Verdict.REFUTE


# Errors and schema definitions.


def test_protocol_errors_are_mesh_errors_and_value_errors() -> None:
    for cls in (ProtocolError, MalformedMessageError, UnknownVersionError):
        assert issubclass(cls, MeshError)
        assert issubclass(cls, ValueError)


def test_message_types_are_frozen_slotted_dataclasses() -> None:
    for cls in [*MESSAGE_TYPES.values(), InstanceStatus]:
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen
        assert "__slots__" in cls.__dict__
        assert cls.VERSION >= 1 if issubclass(cls, Message) else True
    with pytest.raises(dataclasses.FrozenInstanceError):
        HEARTBEAT.seq = 2  # type: ignore[misc]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimsEnvelopeKey(Message):
    KIND: ClassVar[str] = "claims_envelope_key"

    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HasUnsupportedField(Message):
    KIND: ClassVar[str] = "has_unsupported_field"

    tags: set[str]


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (ClaimsEnvelopeKey(kind="x"), "reserved for the envelope"),
        (HasUnsupportedField(tags={"x"}), "is not supported by protocol.codec"),
    ],
)
def test_codec_refuses_message_classes_it_cannot_check(msg: Message, reason: str) -> None:
    with pytest.raises(TypeError, match=reason):
        encode(msg)


# Properties.

MESSAGE_CLASSES = [*MESSAGE_TYPES.values(), UpgradableGreeting]


@settings(max_examples=300)
@given(data=st.binary(max_size=256), cls=st.sampled_from(MESSAGE_CLASSES))
def test_decode_of_arbitrary_bytes_returns_a_message_or_raises_protocol_error(
    data: bytes, cls: type[Message]
) -> None:
    try:
        msg = decode(data, cls)
    except ProtocolError:
        return
    assert isinstance(msg, cls)


@settings(max_examples=300)
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
)
def test_decode_of_corrupted_messages_returns_a_message_or_raises_protocol_error(
    sample: Message, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(encode(sample))
    for position, byte in edits:
        data[position % len(data)] = byte
    try:
        msg = decode(bytes(data), type(sample))
    except ProtocolError:
        return
    assert isinstance(msg, type(sample))


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=16,
)
ENUM_VALUES = st.sampled_from([m.value for e in (InstanceState, Verdict, FailureState) for m in e])
VALUES = PLAIN | ENUM_VALUES
INSTANCE_MAPS = st.fixed_dictionaries(
    {}, optional={f.name: VALUES for f in dataclasses.fields(InstanceStatus)}
)


@st.composite
def message_maps(draw: st.DrawFn) -> tuple[type[Message], dict[str, Any]]:
    """A map with the right `v` and `kind` whose fields hold arbitrary plain data."""
    cls: Any = draw(st.sampled_from(list(MESSAGE_TYPES.values())))
    field_values = VALUES | st.lists(INSTANCE_MAPS, max_size=3)
    fields = draw(
        st.fixed_dictionaries({}, optional={f.name: field_values for f in dataclasses.fields(cls)})
    )
    extra = draw(st.dictionaries(st.text(max_size=6), PLAIN, max_size=3))
    return cls, {**extra, **fields, "v": 1, "kind": cls.KIND}


@settings(max_examples=500)
@given(case=message_maps())
def test_decode_of_arbitrary_maps_returns_a_message_or_raises_protocol_error(
    case: tuple[type[Message], dict[str, Any]],
) -> None:
    cls, raw = case
    try:
        msg = decode(pack(raw), cls)
    except ProtocolError:
        return
    assert isinstance(msg, cls)
    data = encode(msg)  # whatever decode accepts, encode writes back unchanged
    assert encode(decode(data, cls)) == data


FINITE = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=12)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | FINITE | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=12,
)
INSTANCES = st.builds(
    InstanceStatus,
    project=TEXT,
    env=TEXT,
    service=TEXT,
    state=st.sampled_from(InstanceState),
    healthy=st.booleans(),
    restarts=st.integers(0, 2**31),
    last_error=st.none() | TEXT,
)
GENERATED: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Allocation,
        project=TEXT,
        env=TEXT,
        service=TEXT,
        generation=st.integers(0, 2**63 - 1),
        droplets=st.lists(TEXT, max_size=3).map(tuple),
        port=st.none() | st.integers(1, 65535),
        image=st.none() | TEXT,
        command=st.none() | TEXT,
        memory_mb=st.integers(0, 2**20),
        env_vars=st.dictionaries(TEXT, TEXT, max_size=4),
    ),
    st.builds(
        NodeStatus,
        droplet=TEXT,
        address=TEXT,
        incarnation=st.integers(0, 2**63 - 1),
        size=TEXT,
        roles=st.lists(TEXT, max_size=3).map(tuple),
        instances=st.lists(INSTANCES, max_size=3).map(tuple),
        updated_at=FINITE,
    ),
    st.builds(
        Event,
        name=TEXT,
        actor=TEXT,
        subject=TEXT,
        detail=st.dictionaries(TEXT, JSONISH, max_size=4),
        fence=st.none() | st.integers(0, 2**63 - 1),
        at=FINITE,
    ),
    st.builds(
        Suspicion,
        target=TEXT,
        by=TEXT,
        incarnation=st.integers(-(2**63), 2**64 - 1),
        verdict=st.sampled_from(Verdict),
    ),
)


@settings(max_examples=300)
@given(msg=GENERATED)
def test_every_valid_message_survives_a_round_trip(msg: Message) -> None:
    assert decode(encode(msg), type(msg)) == msg
