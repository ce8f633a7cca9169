"""The CloudEvents 1.0 envelope (contract section 2).

Extension attributes (``partitionkey``, ``traceparent``, ...) are kept in ``model_extra`` and
otherwise ignored: an envelope is a tolerant reader. ``data`` stays the raw JSON object here; the
codec validates it against the model of ``type``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)

from novaquota.schemas.common import Timestamp, datetime_to_us, fail, shorten

__all__ = ["SPECVERSION", "Envelope", "parse_schema_version"]

SPECVERSION: Final = "1.0"
_NO_SPACE: Final = re.compile(r"[^\s\x00-\x1f\x7f]+")


def _specversion(value: str) -> str:
    if value != SPECVERSION:
        fail(
            "unsupported_version",
            "only CloudEvents 1.0 is supported, got {value}",
            value=shorten(value),
        )
    return value


def _uri_reference(value: str) -> str:
    # RFC 3986 URI-references are very permissive; what we can reject is whitespace and controls.
    if _NO_SPACE.fullmatch(value) is None:
        fail(
            "invalid_field",
            "must be a URI-reference (no spaces), got {value}",
            value=shorten(value),
        )
    return value


def _json_object(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        fail("not_an_object", "must be a JSON object, got {value}", value=shorten(value))
    return value


def parse_schema_version(value: Any) -> int:
    """``schemaversion`` as an int: ``1``, ``"1"`` and ``"v1"`` all mean version 1."""
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, str):
        text = value[1:] if value[:1] in ("v", "V") else value
        if text.isascii() and text.isdigit() and int(text) >= 1:
            return int(text)
    fail("invalid_field", "must be a positive integer version, got {value}", value=shorten(value))


_NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class Envelope(BaseModel):
    """Attributes of one CloudEvent; ``time`` is normalised to UTC."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Annotated[str, AfterValidator(_specversion)]
    id: _NonEmpty
    source: Annotated[_NonEmpty, AfterValidator(_uri_reference)]
    type: _NonEmpty
    time: Timestamp
    data: Annotated[
        dict[str, Any], PlainValidator(_json_object), WithJsonSchema({"type": "object"})
    ]
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    schemaversion: Annotated[int, BeforeValidator(parse_schema_version)] | None = None

    @property
    def time_us(self) -> int:
        """Event time in microseconds since the epoch (UTC), the stream's clock."""
        return datetime_to_us(self.time)

    @property
    def extensions(self) -> dict[str, Any]:
        """Attributes beyond the ones this contract names."""
        return dict(self.model_extra or {})
