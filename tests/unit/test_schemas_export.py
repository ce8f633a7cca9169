"""JSON Schema export, and schema versions with upcasters applied on read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from novaquota.schemas import (
    MODELS,
    DecodeError,
    decode,
    export_json_schemas,
    register_upcaster,
    versions,
)
from novaquota.schemas.resource_events import VmCreated


def test_export_writes_one_valid_schema_per_type(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path / "out")
    names = {p.name for p in paths}
    assert len(paths) == len(MODELS) + 1 == len(list((tmp_path / "out").iterdir()))
    assert "cloudevents.envelope.v1.json" in names
    for expected in (
        "resource-events.vm.created.v1.json",
        "resource-events.inventory.reported.v1.json",
        "quota-commands.quota.set.v1.json",
        "quota-violations.quota.violation.v1.json",
        "quota-violations.quota.violation_resolved.v1.json",
        "quota-alerts.quota.alert.v1.json",
        "audit.audit.command_applied.v1.json",
    ):
        assert expected in names
    for path in paths:
        schema = json.loads(path.read_text())
        assert schema["$schema"].startswith("https://json-schema.org/")
        assert schema["type"] == "object"
        assert {"specversion", "id", "source", "type", "time", "data"} <= set(schema["required"])
        if path.name != "cloudevents.envelope.v1.json":
            type_ = path.name.split(".", 1)[1].removesuffix(".v1.json")
            assert schema["properties"]["type"]["const"] == type_
            data_ref = schema["properties"]["data"]["$ref"].rsplit("/", 1)[1]
            assert data_ref in schema["$defs"]


def test_amounts_are_numbers_or_strings_in_the_schema(tmp_path: Path) -> None:
    [path] = [p for p in export_json_schemas(tmp_path) if p.name.endswith("vm.created.v1.json")]
    data = json.loads(path.read_text())["$defs"]["VmCreated"]
    assert data["properties"]["cpu"]["type"] == ["number", "string"]
    assert set(data["required"]) == {"tenant_id", "vm_id", "cpu", "memory"}


def _vm_event(data: dict[str, Any], **attrs: Any) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": "e",
            "source": "s",
            "type": "vm.created",
            "time": "2024-05-01T12:00:00Z",
            "data": data,
            **attrs,
        }
    )


@pytest.fixture
def vm_created_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend vm.created moved to v2 (``cores`` renamed to ``cpu``, ``ram_gib`` to MiB)."""
    monkeypatch.setitem(versions.CURRENT_VERSIONS, "vm.created", 2)
    monkeypatch.setattr(versions, "_UPCASTERS", {})

    @register_upcaster("vm.created", 1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["cpu"] = data.pop("cores")
        data["memory"] = data.pop("ram_gib") * 1024
        return data


V1_DATA = {"tenant_id": "acme", "vm_id": "vm-1", "cores": 2, "ram_gib": 4}


@pytest.mark.usefixtures("vm_created_v2")
def test_upcaster_applied_to_old_versions() -> None:
    for attrs in (
        {"schemaversion": "1"},
        {"schemaversion": 1},
        {"dataschema": "https://schemas.example.com/novaquota/vm.created/v1"},
        {"dataschema": "resource-events.vm.created.v1.json"},
    ):
        value = _vm_event(V1_DATA, **attrs)
        decoded = decode(value)
        assert isinstance(decoded.data, VmCreated)
        assert (decoded.data.cpu, decoded.data.memory) == (2, 4096)
        assert decoded.envelope.data == V1_DATA  # the envelope keeps what was sent
    current = {"tenant_id": "acme", "vm_id": "vm-1", "cpu": 3, "memory": 1024}
    assert decode(_vm_event(current)).data.model_dump()["cpu"] == 3  # absent = current
    assert decode(_vm_event(current, schemaversion="v2")).data.model_dump()["cpu"] == 3
    with pytest.raises(DecodeError) as info:
        decode(_vm_event(current, schemaversion=3))
    assert info.value.reason == "unsupported_version"


@pytest.mark.usefixtures("vm_created_v2")
def test_upcaster_registration_is_unique() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_upcaster("vm.created", 1)(lambda data: data)


def test_missing_upcaster_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(versions.CURRENT_VERSIONS, "vm.created", 2)
    monkeypatch.setattr(versions, "_UPCASTERS", {})
    with pytest.raises(DecodeError) as info:
        decode(_vm_event(V1_DATA, schemaversion=1))
    assert info.value.reason == "unsupported_version"
    assert "no upcaster" in info.value.message


def test_every_type_is_at_version_one_and_none_ship() -> None:
    assert set(versions.CURRENT_VERSIONS) == set(MODELS)
    assert set(versions.CURRENT_VERSIONS.values()) == {1}
    assert versions._UPCASTERS == {}
    assert versions.version_from_dataschema("https://x/vm.created") is None
