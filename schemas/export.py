"""JSON Schema files for every event, command and output type (``novaquota schemas export``).

Each file describes the whole CloudEvent of one type (the envelope with ``type`` fixed and
``data`` typed), so producers in other languages can validate what they send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, create_model

from novaquota.schemas.commands import COMMAND_MODELS
from novaquota.schemas.envelope import Envelope
from novaquota.schemas.outputs import OUTPUT_MODELS
from novaquota.schemas.resource_events import RESOURCE_EVENT_MODELS
from novaquota.schemas.versions import current_version

__all__ = ["JSON_SCHEMA_DIALECT", "event_json_schema", "export_json_schemas", "schema_file_name"]

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def _topic_of(type_: str) -> str:
    if type_ in RESOURCE_EVENT_MODELS:
        return "resource-events"
    if type_ in COMMAND_MODELS:
        return "quota-commands"
    return OUTPUT_MODELS[type_].TOPIC


def schema_file_name(type_: str) -> str:
    """e.g. ``resource-events.vm.created.v1.json``."""
    return f"{_topic_of(type_)}.{type_}.v{current_version(type_)}.json"


def event_json_schema(type_: str, data_model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a whole CloudEvent of ``type_``."""
    type_literal: Any = Literal.__getitem__(type_)  # Literal[type_] of a runtime value
    event_model = create_model(
        f"{data_model.__name__}Event",
        __base__=Envelope,
        type=(type_literal, ...),
        data=(data_model, ...),
    )
    schema = event_model.model_json_schema()
    schema["title"] = f"{type_} v{current_version(type_)}"
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def _write(path: Path, schema: dict[str, Any]) -> Path:
    path.write_bytes(
        orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    return path


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one schema file per type (plus the bare envelope); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    envelope = {"$schema": JSON_SCHEMA_DIALECT, **Envelope.model_json_schema()}
    envelope["title"] = "CloudEvents 1.0 envelope"
    written = [_write(directory / "cloudevents.envelope.v1.json", envelope)]
    models: dict[str, type[BaseModel]] = {
        **RESOURCE_EVENT_MODELS,
        **COMMAND_MODELS,
        **OUTPUT_MODELS,
    }
    for type_, model in models.items():
        written.append(_write(directory / schema_file_name(type_), event_json_schema(type_, model)))
    return written
