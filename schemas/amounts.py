"""Exact amounts: ``Decimal`` in the models, integer micro-units in the stream.

Floats drift (a counter that goes up and down ten million times must end where it started), so
every amount is a finite, non-negative ``Decimal`` with at most 6 decimal places, which maps
one-to-one onto an ``int`` of micro-units. The validators here are plain functions (one call per
amount) because they sit on the hot decode path.
"""

from __future__ import annotations

from decimal import Context, Decimal, InvalidOperation
from typing import Annotated, Any, Final

from pydantic import PlainValidator, ValidationInfo, WithJsonSchema

from novaquota.schemas.common import INTEGER_RESOURCES, RESOURCE_TYPES, fail, shorten
from novaquota.schemas.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "MICRO",
    "RESOURCE_DECIMALS",
    "Amount",
    "AtLeastOne",
    "Count",
    "CpuAmount",
    "Percent",
    "PositiveAmount",
    "Resources",
    "WholeAmount",
    "check_amount",
    "from_micros",
    "resource_amount",
    "to_decimal",
    "to_micros",
]

MICRO: Final = 1_000_000
#: Decimal places allowed per resource type (integers are counted things; cpu is millicores).
RESOURCE_DECIMALS: Final[dict[str, int]] = {
    rt: 0 if rt in INTEGER_RESOURCES else 3 if rt == "cpu" else 6 for rt in RESOURCE_TYPES
}

_CTX: Final = Context(prec=200)  # wide enough that no operation here ever rounds
_QUANTA: Final = tuple(Decimal(1).scaleb(-p) for p in range(7))
_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_INF: Final = float("inf")


def to_micros(d: Decimal) -> int:
    """``d`` * 10**6 as an int; raises ``ValueError`` rather than round."""
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {d}")
    scaled = d.scaleb(6, context=_CTX)
    micros = int(scaled)
    if scaled != micros:
        raise ValueError(f"{d} has more than 6 decimal places")
    return micros


def from_micros(micros: int) -> Decimal:
    """The inverse of :func:`to_micros`, without trailing zeros or exponent notation."""
    if micros % MICRO == 0:
        return Decimal(micros // MICRO)
    return Decimal(micros).scaleb(-6, context=_CTX).normalize(_CTX)


def _where(field: str | None) -> dict[str, str]:
    return {} if field is None else {"field": field}


def to_decimal(value: Any, field: str | None = None) -> Decimal:
    """A JSON number (or numeric string) as the decimal it spells.

    A float from the JSON parser is converted through its shortest repr, which is the literal
    itself for anything up to 15 significant digits; longer literals never reach here as floats
    (the codec re-parses such messages with exact decimals).
    """
    kind = type(value)
    if kind is float:
        if value != value or value == _INF or value == -_INF:
            fail(
                "non_finite_amount",
                "must be a finite number, got {value}",
                value=repr(value),
                **_where(field),
            )
        return Decimal(repr(value))
    if kind is int:
        return Decimal(value)
    if kind is Decimal:
        return value
    if kind is str:
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            pass
    fail("invalid_field", "must be a number, got {value}", value=shorten(value), **_where(field))


def check_amount(
    value: Any,
    limits: DecodeLimits,
    places: int,
    *,
    field: str | None = None,
    minimum: Decimal | None = None,
    exclusive_minimum: bool = False,
    maximum: Decimal | None = None,
) -> Decimal:
    """Validate one amount; the error type is the decode reason code."""
    # The common case first: a small whole number needs no precision check.
    if (
        type(value) is int
        and minimum is None
        and maximum is None
        and 0 <= value <= limits.max_amount
    ):
        return Decimal(value)
    d = to_decimal(value, field)
    where = _where(field)
    if not d.is_finite():
        fail("non_finite_amount", "must be a finite number, got {value}", value=str(d), **where)
    if d < _ZERO:
        fail("negative_amount", "must be >= 0, got {value}", value=str(d), **where)
    if minimum is not None and (d <= minimum if exclusive_minimum else d < minimum):
        op = ">" if exclusive_minimum else ">="
        fail(
            "invalid_field",
            "must be {op} {minimum}, got {value}",
            op=op,
            minimum=str(minimum),
            value=str(d),
            **where,
        )
    if maximum is not None:
        if d > maximum:
            fail(
                "invalid_field",
                "must be <= {maximum}, got {value}",
                maximum=str(maximum),
                value=str(d),
                **where,
            )
    elif d > limits.max_amount:
        fail(
            "amount_over_cap",
            "must be <= {cap} (the sanity cap), got {value}",
            cap=str(limits.max_amount),
            value=str(d),
            **where,
        )
    places = min(places, limits.max_decimals)
    exponent = d.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < -places
        and d != d.quantize(_QUANTA[places], context=_CTX)
    ):
        if places == 0:
            fail("too_precise", "must be a whole number, got {value}", value=str(d), **where)
        fail(
            "too_precise",
            "must have at most {places} decimal places, got {value}",
            places=places,
            value=str(d),
            **where,
        )
    return d


def _limits(info: ValidationInfo) -> DecodeLimits:
    context = info.context
    return context if isinstance(context, DecodeLimits) else DEFAULT_LIMITS


def _amount6(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(value, _limits(info), 6)


def _amount3(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(value, _limits(info), 3)


def _whole(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(value, _limits(info), 0)


def _count(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(value, _limits(info), 0, minimum=_ONE)


def _positive(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(value, _limits(info), 6, minimum=_ZERO, exclusive_minimum=True)


def _at_least_one(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(value, _limits(info), 6, minimum=_ONE)


_PERCENT_MAX: Final = Decimal(1000)


def _percent(value: Any, info: ValidationInfo) -> Decimal:
    return check_amount(
        value, _limits(info), 6, minimum=_ZERO, exclusive_minimum=True, maximum=_PERCENT_MAX
    )


def _resources(value: Any, info: ValidationInfo) -> dict[str, Decimal]:
    if not isinstance(value, dict):
        fail(
            "invalid_field",
            "must be an object {{resource_type: amount}}, got {value}",
            value=shorten(value),
        )
    limits = _limits(info)
    out: dict[str, Decimal] = {}
    for key, amount in value.items():
        places = RESOURCE_DECIMALS.get(key)
        if places is None:
            fail(
                "invalid_field",
                "unknown resource type; expected one of {expected}",
                field=str(key),
                expected=", ".join(RESOURCE_TYPES),
            )
        out[key] = check_amount(amount, limits, places, field=key)
    return out


def _schema(description: str, **extra: Any) -> WithJsonSchema:
    schema: dict[str, Any] = {
        "type": ["number", "string"],
        "description": description + " JSON number or decimal string; exact decimal.",
    }
    schema.update(extra)
    return WithJsonSchema(schema)


#: A non-negative amount with up to 6 decimal places, under the sanity cap.
Amount = Annotated[
    Decimal, PlainValidator(_amount6), _schema("Amount >= 0, <= 6 decimals.", minimum=0)
]
#: CPU cores: up to 3 decimals (millicores).
CpuAmount = Annotated[
    Decimal, PlainValidator(_amount3), _schema("Cores >= 0, <= 3 decimals.", minimum=0)
]
#: A count of things: a whole number >= 0.
WholeAmount = Annotated[Decimal, PlainValidator(_whole), _schema("Whole number >= 0.", minimum=0)]
#: A whole number >= 1.
Count = Annotated[Decimal, PlainValidator(_count), _schema("Whole number >= 1.", minimum=1)]
#: Strictly positive amount (a rate).
PositiveAmount = Annotated[
    Decimal, PlainValidator(_positive), _schema("Amount > 0.", exclusiveMinimum=0)
]
#: Amount >= 1 (a token bucket's burst).
AtLeastOne = Annotated[Decimal, PlainValidator(_at_least_one), _schema("Amount >= 1.", minimum=1)]
#: A percentage in (0, 1000].
Percent = Annotated[
    Decimal,
    PlainValidator(_percent),
    _schema("Percent in (0, 1000].", exclusiveMinimum=0, maximum=1000),
]
#: {resource_type: amount}, each amount with its resource type's precision.
Resources = Annotated[
    dict[str, Decimal],
    PlainValidator(_resources),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"enum": list(RESOURCE_TYPES)},
            "additionalProperties": {"type": ["number", "string"], "minimum": 0},
            "description": "{resource_type: amount}; counted types take whole numbers, cpu up "
            "to 3 decimals, the rest up to 6.",
        }
    ),
]


def resource_amount(
    resource_type: str,
    value: Any,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    field: str | None = None,
) -> Decimal:
    """Validate ``value`` as an amount of ``resource_type`` (its precision rules), e.g. a limit."""
    return check_amount(value, limits, RESOURCE_DECIMALS[resource_type], field=field)
