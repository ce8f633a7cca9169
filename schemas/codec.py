"""Bytes in, validated typed events out (and back): the only place that touches wire formats.

``decode`` accepts both modes of the CloudEvents Kafka binding: binary (attributes in ``ce_*``
headers, the value is ``data``), detected by a ``ce_specversion`` header, and structured (the value
is the whole event). Pipeline: parse JSON -> validate the envelope -> look up the type -> upcast
old versions -> validate ``data``. Every failure is a :class:`DecodeError` whose ``reason`` is the
dead-letter ``error.reason``.

JSON numbers must stay exact. orjson parses numbers as floats, which round-trip exactly to the
literal only up to 15 significant digits; a message holding a longer run of digits is therefore
re-parsed with ``json`` and ``Decimal`` (rare, slower), and so is one that orjson refuses (``NaN``
and ``Infinity`` literals, out-of-range numbers) so that the reason can be precise.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ValidationError

from novaquota.schemas.commands import COMMAND_MODELS, Command
from novaquota.schemas.common import format_time_us, shorten
from novaquota.schemas.envelope import SPECVERSION, Envelope
from novaquota.schemas.exceptions import REASONS, DecodeError
from novaquota.schemas.limits import DEFAULT_LIMITS, DecodeLimits
from novaquota.schemas.outputs import OUTPUT_MODELS, Output
from novaquota.schemas.resource_events import RESOURCE_EVENT_MODELS, ResourceEvent
from novaquota.schemas.versions import CURRENT_VERSIONS, upcast, version_from_dataschema

__all__ = [
    "DEFAULT_LIMITS",
    "MODELS",
    "DecodeLimits",
    "Decoded",
    "Headers",
    "Kind",
    "bench_decode",
    "decode",
    "decode_output",
    "encode",
    "encode_binary",
]

Kind = Literal["resource", "command"]
Headers = Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None]

_INBOUND: Final[dict[str, tuple[type[ResourceEvent] | type[Command], Kind]]] = {
    **{t: (m, "resource") for t, m in RESOURCE_EVENT_MODELS.items()},
    **{t: (m, "command") for t, m in COMMAND_MODELS.items()},
}
#: Every type the codec knows, inbound and outbound, to its ``data`` model.
MODELS: Final[dict[str, type[BaseModel]]] = {
    **RESOURCE_EVENT_MODELS,
    **COMMAND_MODELS,
    **OUTPUT_MODELS,
}

_JSON_CONTENT_TYPE: Final = "application/json"
_CE_PREFIX: Final = "ce_"
# 16+ consecutive digits/dots mark a number literal that a float may not hold exactly; mapping
# digits and dots onto "0" and searching for a run is ~7x faster than a regex.
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"0123456789.", b"0" * 11)
_LONG_RUN: Final = b"0" * 16
_PYDANTIC_REASONS: Final = {"missing": "missing_field", "finite_number": "non_finite_amount"}


@dataclass(frozen=True, slots=True)
class Decoded:
    """A validated input event: its envelope, typed ``data``, and event time in microseconds."""

    envelope: Envelope
    data: ResourceEvent | Command
    type: str
    time_us: int
    kind: Kind

    @property
    def source(self) -> str:
        return self.envelope.source

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def dedup_key(self) -> tuple[str, str]:
        """(source, id): a second message with the same pair has no further effect."""
        return (self.envelope.source, self.envelope.id)

    @property
    def tenant_id(self) -> str | None:
        """``data.tenant_id`` (authoritative for routing); ``system`` for system-level commands."""
        tenant: str | None = getattr(self.data, "tenant_id", None)
        return tenant


# --- JSON ------------------------------------------------------------------------------------


def _exact_constant(name: str) -> Decimal:
    return Decimal(name)  # NaN, Infinity, -Infinity: validators report non_finite_amount


def _loads_exact(raw: bytes | bytearray | memoryview, where: str) -> Any:
    try:
        text = bytes(raw).decode("utf-8")
        obj = json.loads(text, parse_float=Decimal, parse_constant=_exact_constant)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError("malformed_json", f"{where}: {shorten(str(exc), 120)}") from None
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(obj):
        # json accepts an escaped lone surrogate, orjson (and UTF-8) do not: keep them out.
        raise DecodeError("malformed_json", f"{where}: string with a lone UTF-16 surrogate")
    return obj


def _has_lone_surrogate(obj: Any) -> bool:
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def _loads(value: bytes | bytearray | memoryview | str | None, where: str) -> Any:
    if value is None or len(value) == 0:
        raise DecodeError("malformed_json", f"{where}: empty record value")
    if isinstance(value, str):
        raw: bytes | bytearray = value.encode("utf-8", "surrogatepass")
    else:
        raw = value if isinstance(value, bytes | bytearray) else bytes(value)
    if _LONG_RUN in raw.translate(_DIGITS_TO_ZERO):
        return _loads_exact(raw, where)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _loads_exact(raw, where)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise TypeError(f"non-finite decimal {obj}")
        return orjson.Fragment(format(obj, "f").encode())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_UTC_Z)


# --- errors ----------------------------------------------------------------------------------


def _decode_error(exc: ValidationError, prefix: str) -> DecodeError:
    """The first pydantic error as a DecodeError: the error type is the reason when it is one of
    ours (custom validators raise with reason codes), else a mapping."""
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    parts = [prefix] if prefix else []
    parts.extend(str(p) for p in first["loc"])
    ctx = first.get("ctx") or {}
    if "field" in ctx:
        parts.append(str(ctx["field"]))
    path = ".".join(parts) or "value"
    if kind in REASONS:
        return DecodeError(kind, f"{path}: {first['msg']}")
    reason = _PYDANTIC_REASONS.get(kind, "invalid_field")
    if reason == "missing_field":
        return DecodeError(reason, f"{path}: required")
    return DecodeError(reason, f"{path}: {first['msg']}, got {shorten(repr(first['input']))}")


# --- decode ----------------------------------------------------------------------------------


def _header_items(headers: Headers) -> Iterable[tuple[str | bytes, bytes | str | None]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def _header_text(name: str, value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("invalid_field", f"{name}: header value is not UTF-8") from None


def _read_headers(headers: Headers) -> tuple[dict[str, Any] | None, str | None]:
    """(binary-mode attributes or None, content-type header)."""
    attrs: dict[str, Any] = {}
    content_type: str | None = None
    for name, value in _header_items(headers):
        if value is None:
            continue
        key = (name.decode("utf-8", "replace") if isinstance(name, bytes) else name).lower()
        if key.startswith(_CE_PREFIX):
            attrs[key[3:]] = _header_text(key[3:], value)
        elif key == "content-type":
            content_type = _header_text("content-type", value)
    return (attrs if "specversion" in attrs else None), content_type


def _structured(value: Any, content_type: str | None) -> dict[str, Any]:
    obj = _loads(value, "value")
    if type(obj) is not dict:
        raise DecodeError(
            "not_an_object",
            f"value: a structured CloudEvent must be a JSON object, got {type(obj).__name__}",
        )
    if "data" not in obj and "data_base64" in obj:
        encoded = obj.pop("data_base64")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise DecodeError("invalid_field", "data_base64: not valid base64") from None
        obj["data"] = _loads(payload, "data_base64")
    if (
        content_type is not None
        and "datacontenttype" not in obj
        and not content_type.startswith("application/cloudevents")
    ):
        obj["datacontenttype"] = content_type  # the v1 SDK moves it into the header
    return obj


def _binary(value: Any, attrs: dict[str, Any], content_type: str | None) -> dict[str, Any]:
    if value is None or len(value) == 0:
        raise DecodeError("missing_field", "data: required (the record value is empty)")
    data = _loads(value, "data")
    if type(data) is not dict:
        raise DecodeError(
            "not_an_object", f"data: must be a JSON object, got {type(data).__name__}"
        )
    attrs["data"] = data
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    return attrs


def _validated_envelope(attrs: dict[str, Any]) -> Envelope:
    try:
        return Envelope.model_validate(attrs)
    except ValidationError as exc:
        raise _decode_error(exc, "") from None


def _current_data(envelope: Envelope) -> dict[str, Any]:
    version = envelope.schemaversion
    if version is None and envelope.dataschema is not None:
        version = version_from_dataschema(envelope.dataschema)
    data = envelope.data
    if version is not None and version != CURRENT_VERSIONS.get(envelope.type, 1):
        data = upcast(envelope.type, version, copy.deepcopy(data))  # upcasters may mutate
    return data


def decode(
    value: bytes | bytearray | memoryview | str | None,
    headers: Headers | None = None,
    *,
    record_timestamp_ms: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Decoded:
    """One Kafka record of ``resource-events`` or ``quota-commands``, validated.

    ``record_timestamp_ms`` is the record's own timestamp (None or negative: unknown, no check);
    an event time more than ``limits.max_clock_skew_seconds`` ahead of it is ``future_time``,
    which a replay decides exactly as the first run did.
    """
    attrs: dict[str, Any] | None = None
    content_type: str | None = None
    if headers:
        attrs, content_type = _read_headers(headers)
    if attrs is not None:
        attrs = _binary(value, attrs, content_type)
    else:
        attrs = _structured(value, content_type)

    envelope = _validated_envelope(attrs)
    entry = _INBOUND.get(envelope.type)
    if entry is None:
        raise DecodeError("unknown_type", f"type: unknown event type {shorten(envelope.type)!r}")
    model, kind = entry

    time_us = envelope.time_us
    if (
        record_timestamp_ms is not None
        and record_timestamp_ms >= 0
        and time_us - record_timestamp_ms * 1000 > limits.max_clock_skew_us
    ):
        raise DecodeError(
            "future_time",
            f"time: {format_time_us(time_us)} is more than {limits.max_clock_skew_seconds:g} s "
            f"ahead of the record timestamp {format_time_us(record_timestamp_ms * 1000)}",
        )

    data = envelope.data
    if envelope.schemaversion is not None or envelope.dataschema is not None:
        data = _current_data(envelope)
    try:
        typed = model.model_validate(data, context=limits)
    except ValidationError as exc:
        raise _decode_error(exc, "data") from None
    return Decoded(envelope, typed, envelope.type, time_us, kind)


def decode_output(value: bytes | bytearray | memoryview | str) -> tuple[Envelope, Output]:
    """A structured CloudEvent from an output topic (violations, alerts, audit), validated."""
    attrs = _structured(value, None)
    envelope = _validated_envelope(attrs)
    model = OUTPUT_MODELS.get(envelope.type)
    if model is None:
        raise DecodeError("unknown_type", f"type: unknown output type {shorten(envelope.type)!r}")
    try:
        return envelope, model.model_validate(envelope.data)
    except ValidationError as exc:
        raise _decode_error(exc, "data") from None


# --- encode ----------------------------------------------------------------------------------


def _data_dict(type_: str, data: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    model = MODELS.get(type_)
    if model is None:
        raise ValueError(f"unknown event type {type_!r}")
    if isinstance(data, BaseModel):
        if not isinstance(data, model):
            raise TypeError(f"{type_} takes {model.__name__}, got {type(data).__name__}")
        validated = data
    else:
        validated = model.model_validate(dict(data))
    return validated.model_dump()


def _attributes(
    type_: str,
    source: str,
    id: str,
    time_us: int,
    subject: str | None,
    extensions: Mapping[str, str] | None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": id,
        "source": source,
        "type": type_,
        "time": format_time_us(time_us),
    }
    if subject is not None:
        attrs["subject"] = subject
    for name, value in (extensions or {}).items():
        if name in attrs or name in ("data", "data_base64", "datacontenttype"):
            raise ValueError(f"extension {name!r} collides with a CloudEvents attribute")
        attrs[name] = value
    return attrs


def encode(
    type: str,
    data: BaseModel | Mapping[str, Any],
    *,
    source: str,
    id: str,
    time_us: int,
    subject: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> bytes:
    """A structured-mode CloudEvent (JSON bytes); ``data`` as a dict is validated first.

    Decimals are written as JSON numbers with their exact digits, times as RFC 3339 UTC.
    """
    attrs = _attributes(type, source, id, time_us, subject, extensions)
    attrs["datacontenttype"] = _JSON_CONTENT_TYPE
    attrs["data"] = _data_dict(type, data)
    return _dumps(attrs)


def encode_binary(
    type: str,
    data: BaseModel | Mapping[str, Any],
    *,
    source: str,
    id: str,
    time_us: int,
    subject: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> tuple[list[tuple[str, bytes]], bytes]:
    """A binary-mode CloudEvent: (``ce_*`` and ``content-type`` headers, JSON ``data``)."""
    attrs = _attributes(type, source, id, time_us, subject, extensions)
    headers = [(_CE_PREFIX + name, str(value).encode("utf-8")) for name, value in attrs.items()]
    headers.append(("content-type", _JSON_CONTENT_TYPE.encode()))
    return headers, _dumps(_data_dict(type, data))


def bench_decode(n: int = 100_000) -> float:
    """Decodes per second of one structured ``vm.created`` message (single thread)."""
    value = encode(
        "vm.created",
        {
            "tenant_id": "tenant-0042",
            "project_id": "project-7",
            "user_id": "user-3",
            "vm_id": "vm-5f0c2a9e-8c1b-4d2e-9a57-0d1c3b6e7f81",
            "cpu": 4,
            "memory": 8192,
            "gpu": 0,
        },
        source="nova/compute/host-17",
        id="evt-000000001",
        time_us=1_717_000_000_123_456,
        extensions={"partitionkey": "tenant-0042"},
    )
    headers = [("content-type", b"application/cloudevents+json")]
    record_ms = 1_717_000_000_200
    decode(value, headers, record_timestamp_ms=record_ms)
    start = time.perf_counter()
    for _ in range(n):
        decode(value, headers, record_timestamp_ms=record_ms)
    return n / (time.perf_counter() - start)
