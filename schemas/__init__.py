"""Pure data contracts of NovaCron Quota Stream: CloudEvents envelope, resource events, commands,
outputs, upcasters, the codec (bytes -> upcast -> validated model) and JSON Schema export.

pydantic v2 only; nothing here imports Kafka or Faust, so every consumer (stream, projections,
API, CLI, tests) shares one definition of the wire format.
"""

from novaquota.schemas.allocation import instance_key, instance_key_for, is_release, resources_of
from novaquota.schemas.amounts import from_micros, to_micros
from novaquota.schemas.codec import (
    MODELS,
    Decoded,
    bench_decode,
    decode,
    decode_output,
    encode,
    encode_binary,
)
from novaquota.schemas.commands import (
    COMMAND_MODELS,
    BudgetSet,
    Command,
    QuotaDeleted,
    QuotaSet,
    QuotaSpec,
    RateLimitSet,
    ReservationCancelled,
    ReservationCreated,
    TemplateApplied,
    TemplateDefined,
    TemplateSpec,
    TenantDeleted,
)
from novaquota.schemas.envelope import Envelope
from novaquota.schemas.exceptions import REASONS, DecodeError
from novaquota.schemas.export import export_json_schemas
from novaquota.schemas.limits import DEFAULT_LIMITS, DecodeLimits
from novaquota.schemas.outputs import (
    OUTPUT_MODELS,
    AuditRecord,
    Cause,
    Output,
    QuotaAlert,
    QuotaViolation,
    QuotaViolationResolved,
)
from novaquota.schemas.resource_events import RESOURCE_EVENT_MODELS, ResourceEvent
from novaquota.schemas.templates import BUILTIN_TEMPLATES, expand_template
from novaquota.schemas.versions import register_upcaster

__all__ = [
    "BUILTIN_TEMPLATES",
    "COMMAND_MODELS",
    "DEFAULT_LIMITS",
    "MODELS",
    "OUTPUT_MODELS",
    "REASONS",
    "RESOURCE_EVENT_MODELS",
    "AuditRecord",
    "BudgetSet",
    "Cause",
    "Command",
    "DecodeError",
    "DecodeLimits",
    "Decoded",
    "Envelope",
    "Output",
    "QuotaAlert",
    "QuotaDeleted",
    "QuotaSet",
    "QuotaSpec",
    "QuotaViolation",
    "QuotaViolationResolved",
    "RateLimitSet",
    "ReservationCancelled",
    "ReservationCreated",
    "ResourceEvent",
    "TemplateApplied",
    "TemplateDefined",
    "TemplateSpec",
    "TenantDeleted",
    "bench_decode",
    "decode",
    "decode_output",
    "encode",
    "encode_binary",
    "expand_template",
    "export_json_schemas",
    "from_micros",
    "instance_key",
    "instance_key_for",
    "is_release",
    "register_upcaster",
    "resources_of",
    "to_micros",
]
