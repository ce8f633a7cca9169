"""The local broker's KRaft cluster ids."""

from __future__ import annotations

import base64
import uuid

import pytest

from novaquota.ops import kafka_local


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8.. encodes to "-" first in URL-safe base64: the storage tool would read it as an option
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x10" + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).startswith(b"-")
    ids = iter([dashed, dashed, plain])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(ids))
    cid = kafka_local._cluster_id()
    assert cid == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cid) == 22


def test_cluster_ids_are_random_and_well_formed() -> None:
    ids = {kafka_local._cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
