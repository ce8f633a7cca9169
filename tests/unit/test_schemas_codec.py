"""The codec: both CloudEvents Kafka modes, the official SDK's messages, round trips, and a
corpus of bad inputs each with the dead-letter reason it must get."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import kafka as core_kafka
from cloudevents.core.v1.event import CloudEvent as CoreCloudEvent
from cloudevents.v1 import kafka as v1_kafka
from cloudevents.v1.http import CloudEvent as V1CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from novaquota.schemas import (
    COMMAND_MODELS,
    MODELS,
    OUTPUT_MODELS,
    RESOURCE_EVENT_MODELS,
    DecodeError,
    DecodeLimits,
    QuotaSet,
    bench_decode,
    decode,
    decode_output,
    encode,
    encode_binary,
)
from novaquota.schemas.amounts import RESOURCE_DECIMALS
from novaquota.schemas.common import RESOURCE_TYPES
from novaquota.schemas.exceptions import REASONS
from novaquota.schemas.resource_events import VmCreated

DATA_DIR = Path(__file__).parent / "data"
SAMPLES: dict[str, dict[str, Any]] = json.loads((DATA_DIR / "schema_samples.json").read_text())
BAD = [json.loads(line) for line in (DATA_DIR / "bad_events.jsonl").read_text().splitlines()]
INBOUND = sorted([*RESOURCE_EVENT_MODELS, *COMMAND_MODELS])
T0_US = 1_714_564_800_000_000  # 2024-05-01T12:00:00Z


def structured(type_: str, data: Any, **attrs: Any) -> bytes:
    event = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "nova/compute/host-1",
        "type": type_,
        "time": "2024-05-01T12:00:00Z",
        "data": data,
        **attrs,
    }
    return orjson.dumps(event)


def binary(type_: str, data: Any, **attrs: str) -> tuple[list[tuple[str, bytes]], bytes]:
    headers = {
        "ce_specversion": "1.0",
        "ce_id": "evt-1",
        "ce_source": "nova/compute/host-1",
        "ce_type": type_,
        "ce_time": "2024-05-01T12:00:00Z",
        **{f"ce_{k}": v for k, v in attrs.items()},
        "content-type": "application/json",
    }
    return [(k, v.encode()) for k, v in headers.items()], orjson.dumps(data)


def test_samples_cover_every_type() -> None:
    assert set(SAMPLES) == set(MODELS)


@pytest.mark.parametrize("type_", INBOUND)
def test_every_type_decodes_structured(type_: str) -> None:
    decoded = decode(structured(type_, SAMPLES[type_]))
    assert decoded.type == type_
    assert isinstance(decoded.data, MODELS[type_])
    assert decoded.kind == ("resource" if type_ in RESOURCE_EVENT_MODELS else "command")
    assert decoded.time_us == T0_US == decoded.envelope.time_us
    assert (decoded.source, decoded.id) == ("nova/compute/host-1", "evt-1")


@pytest.mark.parametrize("type_", INBOUND)
def test_every_type_decodes_binary(type_: str) -> None:
    headers, value = binary(type_, SAMPLES[type_], subject="thing-1")
    decoded = decode(value, headers)
    assert decoded.data == decode(structured(type_, SAMPLES[type_])).data
    assert decoded.envelope.subject == "thing-1"
    assert decoded.envelope.datacontenttype == "application/json"
    assert decoded.time_us == T0_US


@pytest.mark.parametrize("type_", INBOUND)
def test_encode_round_trips_every_type(type_: str) -> None:
    model = MODELS[type_].model_validate(SAMPLES[type_])
    value = encode(type_, model, source="src", id="e-9", time_us=T0_US + 7, subject="s")
    decoded = decode(value)
    assert decoded.data == model
    assert decoded.time_us == T0_US + 7
    assert decoded.envelope.subject == "s"
    headers, payload = encode_binary(type_, SAMPLES[type_], source="src", id="e-9", time_us=T0_US)
    assert decode(payload, headers).data == model


@pytest.mark.parametrize("type_", sorted(OUTPUT_MODELS))
def test_outputs_round_trip(type_: str) -> None:
    value = encode(type_, SAMPLES[type_], source="novaquota/worker-0", id="o-1", time_us=T0_US)
    envelope, data = decode_output(value)
    assert envelope.type == type_
    assert data == OUTPUT_MODELS[type_].model_validate(SAMPLES[type_])
    with pytest.raises(DecodeError) as info:
        decode(value)  # outputs are not inputs
    assert info.value.reason == "unknown_type"


def test_outputs_are_strict() -> None:
    value = structured("quota.alert", {**SAMPLES["quota.alert"], "surprise": 1})
    with pytest.raises(DecodeError) as info:
        decode_output(value)
    assert info.value.reason == "invalid_field"
    assert info.value.message.startswith("data.surprise:")


def test_encode_writes_exact_json_numbers() -> None:
    data = {**SAMPLES["vm.created"], "cpu": "0.125", "memory": Decimal("999999999999.999999")}
    value = encode("vm.created", data, source="s", id="1", time_us=T0_US)
    assert b'"cpu":0.125' in value
    assert b'"memory":999999999999.999999' in value
    assert b'"time":"2024-05-01T12:00:00.000000Z"' in value
    assert decode(value).data.memory == Decimal("999999999999.999999")  # type: ignore[union-attr]


def test_encode_validates_dicts_and_checks_model_types() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        encode("vm.exploded", {}, source="s", id="1", time_us=0)
    with pytest.raises(ValueError):
        encode("vm.created", {"tenant_id": "t"}, source="s", id="1", time_us=0)
    qs = QuotaSet.model_validate(SAMPLES["quota.set"])
    with pytest.raises(TypeError):
        encode("vm.created", qs, source="s", id="1", time_us=0)
    with pytest.raises(ValueError, match="collides"):
        encode("quota.set", qs, source="s", id="1", time_us=0, extensions={"id": "x"})


# --- the official SDK's Kafka messages ---------------------------------------------------------

SDK_DATA = {"tenant_id": "acme", "vm_id": "vm-1", "cpu": 0.5, "memory": 2048, "color": "red"}


def _v1_event() -> V1CloudEvent:
    attributes = {
        "type": "vm.created",
        "source": "nova/compute/host-1",
        "partitionkey": "acme",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "datacontenttype": "application/json",
    }
    return V1CloudEvent(attributes, SDK_DATA)


def _core_event() -> CoreCloudEvent:
    attributes = {"type": "vm.created", "source": "nova/compute/host-1", "partitionkey": "acme"}
    return CoreCloudEvent(attributes, dict(SDK_DATA))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: v1_kafka.to_binary(_v1_event()), id="v1-binary"),
        pytest.param(lambda: v1_kafka.to_structured(_v1_event()), id="v1-structured"),
        pytest.param(lambda: core_kafka.to_binary_event(_core_event()), id="core-binary"),
        pytest.param(lambda: core_kafka.to_structured_event(_core_event()), id="core-structured"),
    ],
)
def test_official_sdk_messages_decode_as_they_come(make: Any) -> None:
    message = make()
    for headers in (message.headers, list(message.headers.items())):
        decoded = decode(message.value, headers)
        assert decoded.type == "vm.created"
        assert isinstance(decoded.data, VmCreated)
        assert decoded.data.cpu == Decimal("0.5")
        assert decoded.data.memory == Decimal(2048)
        assert not hasattr(decoded.data, "color")  # unknown data fields are ignored
        assert decoded.tenant_id == "acme"
        assert decoded.envelope.id  # the SDK made one up


def test_sdk_extensions_are_kept() -> None:
    message = v1_kafka.to_structured(_v1_event())
    decoded = decode(message.value, message.headers)
    assert decoded.envelope.extensions["partitionkey"] == "acme"
    assert decoded.envelope.extensions["traceparent"].startswith("00-4bf9")
    assert decoded.envelope.datacontenttype == "application/json"  # from the content-type header


def test_extension_attributes_kept_and_unknown_data_ignored() -> None:
    value = structured(
        "vm.created",
        {**SAMPLES["vm.created"], "flavor": "m1.large", "tags": {"a": 1}},
        traceparent="00-abc",
        partitionkey="acme",
        myext={"nested": True},
    )
    decoded = decode(value)
    assert decoded.envelope.extensions == {
        "traceparent": "00-abc",
        "partitionkey": "acme",
        "myext": {"nested": True},
    }
    assert "flavor" not in decoded.data.model_dump()


def test_binary_extension_headers_and_case() -> None:
    headers, value = binary("vm.created", SAMPLES["vm.created"], traceparent="00-xyz")
    headers = [(name.upper() if name.startswith("ce_") else name, v) for name, v in headers]
    decoded = decode(value, headers)
    assert decoded.envelope.extensions == {"traceparent": "00-xyz"}


def test_binary_mode_needs_ce_specversion() -> None:
    headers, value = binary("vm.created", SAMPLES["vm.created"])
    without = [(k, v) for k, v in headers if k != "ce_specversion"]
    with pytest.raises(DecodeError) as info:
        decode(value, without)  # read as structured: the value is only the data
    assert info.value.reason == "missing_field"


def test_binary_mode_errors() -> None:
    headers, _ = binary("vm.created", {})
    for value, reason in (
        (None, "missing_field"),
        (b"[1]", "not_an_object"),
        (b"{", "malformed_json"),
    ):
        with pytest.raises(DecodeError) as info:
            decode(value, headers)
        assert info.value.reason == reason
    bad_utf8 = [*headers, ("ce_traceparent", b"\xff\xfe")]
    with pytest.raises(DecodeError) as info:
        decode(b"{}", bad_utf8)
    assert info.value.reason == "invalid_field"


def test_structured_data_base64() -> None:
    import base64

    payload = base64.b64encode(orjson.dumps(SAMPLES["vm.created"])).decode()
    event = orjson.loads(structured("vm.created", {}))
    del event["data"]
    event["data_base64"] = payload
    assert decode(orjson.dumps(event)).data == VmCreated.model_validate(SAMPLES["vm.created"])


def test_time_is_normalised_to_utc() -> None:
    decoded = decode(
        structured("vm.created", SAMPLES["vm.created"], time="2024-05-01T14:00:00+02:00")
    )
    assert decoded.time_us == T0_US
    assert decoded.envelope.time.utcoffset() is not None
    assert decoded.envelope.time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    nanos = decode(
        structured("vm.created", SAMPLES["vm.created"], time="2024-05-01T12:00:00.123456789Z")
    )
    assert nanos.time_us == T0_US + 123456


def test_future_time_uses_the_record_timestamp_and_limits() -> None:
    value = structured("vm.created", SAMPLES["vm.created"], time="2024-05-01T12:10:00Z")
    record_ms = T0_US // 1000
    with pytest.raises(DecodeError) as info:
        decode(value, record_timestamp_ms=record_ms)
    assert info.value.reason == "future_time"
    assert decode(value).time_us > T0_US  # no record timestamp, no check
    assert decode(value, record_timestamp_ms=record_ms + 300_000).time_us > T0_US
    lenient = DecodeLimits(max_clock_skew_seconds=900)
    assert decode(value, record_timestamp_ms=record_ms, limits=lenient).type == "vm.created"


def test_limits_are_configurable() -> None:
    value = structured("vm.created", {**SAMPLES["vm.created"], "memory": 5000})
    with pytest.raises(DecodeError) as info:
        decode(value, limits=DecodeLimits(max_amount=4096.0))
    assert info.value.reason == "amount_over_cap"
    value = structured("vm.created", {**SAMPLES["vm.created"], "memory": 1.25})
    with pytest.raises(DecodeError) as info:
        decode(value, limits=DecodeLimits(max_decimals=1))
    assert info.value.reason == "too_precise"


def test_tombstone_and_empty_values() -> None:
    for value in (None, b""):
        with pytest.raises(DecodeError) as info:
            decode(value)
        assert info.value.reason == "malformed_json"


@pytest.mark.parametrize("row", BAD, ids=[row["case"] for row in BAD])
def test_bad_input_corpus(row: dict[str, Any]) -> None:
    assert row["reason"] in REASONS
    with pytest.raises(DecodeError) as info:
        decode(
            row["value"].encode("utf-8", "surrogatepass"),
            record_timestamp_ms=row.get("record_timestamp_ms"),
        )
    assert info.value.reason == row["reason"], info.value.message
    assert info.value.message.startswith(row["path"] + ":"), info.value.message


def test_decode_error_is_picklable_and_checked() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(DecodeError("late", "time: too old")))
    assert (error.reason, error.message) == ("late", "time: too old")
    with pytest.raises(ValueError):
        DecodeError("because", "x")


def test_bench_decode_runs() -> None:
    assert bench_decode(500) > 0


# --- properties ----------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=24).filter(lambda s: s != "system")


def amounts(places: int, max_value: int = 10**12) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=0, max_value=max_value, places=places)


vm_data = st.fixed_dictionaries(
    {"tenant_id": ids, "vm_id": ids, "cpu": amounts(3, 10**6), "memory": amounts(6)},
    optional={"gpu": amounts(6, 64), "project_id": ids, "user_id": ids},
)
usage_data = st.fixed_dictionaries(
    {
        "tenant_id": ids,
        "resource_id": ids,
        "resources": st.lists(st.sampled_from(RESOURCE_TYPES), unique=True, max_size=6).flatmap(
            lambda rts: st.fixed_dictionaries({rt: amounts(RESOURCE_DECIMALS[rt]) for rt in rts})
        ),
    }
)


def _as_float(value: Any) -> Any:
    if not isinstance(value, Decimal):
        return value
    return float(value) if len(value.normalize().as_tuple().digits) <= 15 else str(value)


@settings(max_examples=150, deadline=None)
@given(data=vm_data, time_us=st.integers(0, 4_102_444_800_000_000), as_float=st.booleans())
def test_vm_round_trip_property(data: dict[str, Any], time_us: int, as_float: bool) -> None:
    expected = VmCreated.model_validate(data)
    if as_float:
        # A producer writing JSON floats: exact whenever the literal has <= 15 digits.
        floats = {k: _as_float(v) for k, v in data.items()}
        value = structured("vm.created", floats, time="1970-01-01T00:00:00Z")
        assert decode(value).data == expected
    value = encode("vm.created", data, source="s", id="i", time_us=time_us)
    decoded = decode(value)
    assert decoded.time_us == time_us
    assert decoded.data == expected
    headers, payload = encode_binary("vm.created", data, source="s", id="i", time_us=time_us)
    assert decode(payload, headers).data == expected


@settings(max_examples=100, deadline=None)
@given(data=usage_data)
def test_usage_round_trip_property(data: dict[str, Any]) -> None:
    value = encode("usage.reported", data, source="s", id="i", time_us=T0_US)
    decoded = decode(value)
    assert decoded.data.model_dump()["resources"] == data["resources"]


quota_data = st.sampled_from(sorted(set(RESOURCE_TYPES))).flatmap(
    lambda rt: st.fixed_dictionaries(
        {
            "actor": ids,
            "level": st.sampled_from(["tenant", "project", "user"]),
            "entity_id": ids,
            "tenant_id": ids,
            "resource_type": st.just(rt),
            "limit": amounts(RESOURCE_DECIMALS[rt], 10**9),
            "limit_type": st.sampled_from(["hard", "soft"]),
            "status": st.sampled_from(["active", "suspended"]),
            "enforcement_action": st.sampled_from(["deny", "warn", "throttle", "notify"]),
        },
        optional={"window": st.sampled_from(["minute", "hour", "day", "month"])}
        if rt in ("api_requests", "cost")
        else {},
    )
)


@settings(max_examples=150, deadline=None)
@given(data=quota_data, burst_extra=st.one_of(st.none(), st.integers(0, 10**6)))
def test_quota_set_round_trip_property(data: dict[str, Any], burst_extra: int | None) -> None:
    if data["level"] == "tenant":
        data["entity_id"] = data["tenant_id"]
    if data["resource_type"] in ("api_requests", "cost") and "window" not in data:
        data["window"] = "day"
    if burst_extra is not None:
        data["burst_limit"] = data["limit"] + burst_extra
    value = encode("quota.set", data, source="api", id="c", time_us=T0_US)
    decoded = decode(value)
    assert decoded.kind == "command"
    assert decoded.data == QuotaSet.model_validate(data)
    assert decoded.tenant_id == data["tenant_id"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_another_exception(raw: bytes) -> None:
    try:
        decode(raw)
    except DecodeError as error:
        assert error.reason in REASONS
