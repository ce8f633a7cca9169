"""The audit endpoint's pure parts: query parsing, page tokens, record decoding and filters."""

from __future__ import annotations

import orjson
import pytest

from projections.audit import (
    AuditQuery,
    _record,
    decode_page_token,
    encode_page_token,
    home_partition,
    match,
    parse_query,
)
from projections.exceptions import QueryError
from streams.agents import home_partition as worker_home_partition


def _value(
    type_: str, actor: str, tenant: str = "acme", time: str = "2026-11-02T10:00:00Z"
) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": "a1",
            "source": "novaquota/enforcement",
            "type": type_,
            "time": time,
            "data": {
                "actor": actor,
                "cause": {"source": "novaquota/api", "id": "c1", "type": "quota.set"},
                "tenant_id": tenant,
                "details": {"action": "audit.quota_set", "subject": "tenant/acme/cpu"},
            },
        }
    )


def test_the_tenant_partition_is_the_enforcement_workers() -> None:
    for tenant in ("acme", "globex", "tenant-a", "tenant-b", "ü-ñ"):
        for n in (1, 2, 4, 12):
            assert home_partition(tenant, n) == worker_home_partition(tenant, n)


def test_parse_query_defaults_and_bad_input() -> None:
    q = parse_query({}, "acme")
    assert (q.tenant_id, q.actor, q.type, q.page_size, q.before) == ("acme", None, None, 50, None)
    q = parse_query(
        {"actor": "token:a", "type": "audit.correction", "since": "2026-11-02T00:00:00Z",
         "until": "1793664000", "page_size": "200"},
        "acme",
    )  # fmt: skip
    assert q.since_us == 1_793_577_600_000_000 and q.until_us == 1_793_664_000_000_000
    assert q.page_size == 200
    cases = [
        ({"since": "yesterday"}, "invalid_time"),
        ({"until": "2026-11-02T00:00:00"}, "invalid_time"),  # no offset
        ({"since": "2026-11-03T00:00:00Z", "until": "2026-11-02T00:00:00Z"}, "invalid_time"),
        ({"type": "quota.set"}, "invalid_type"),
        ({"page_size": "0"}, "invalid_page_size"),
        ({"page_size": "201"}, "invalid_page_size"),
        ({"page_size": "-1"}, "invalid_page_size"),
        ({"actor": "x" * 257}, "invalid_actor"),
        ({"page_token": "garbage"}, "invalid_page_token"),
    ]
    for query, code in cases:
        with pytest.raises(QueryError) as err:
            parse_query(query, "acme")
        assert err.value.code == code, query


def test_a_page_token_belongs_to_its_tenant_and_filter() -> None:
    q = AuditQuery("acme", actor="token:a")
    token = encode_page_token(q, 1234)
    assert decode_page_token(token, q) == 1234
    assert parse_query({"actor": "token:a", "page_token": token}, "acme").before == 1234
    for other in (AuditQuery("globex", actor="token:a"), AuditQuery("acme", actor="token:b")):
        with pytest.raises(QueryError):
            decode_page_token(token, other)


def test_records_of_another_tenant_or_unreadable_ones_are_skipped() -> None:
    q = AuditQuery("acme")
    rec = _record(_value("audit.command_applied", "token:a"), q)
    assert rec is not None
    assert (rec["type"], rec["actor"], rec["time"]) == (
        "audit.command_applied",
        "token:a",
        "2026-11-02T10:00:00Z",
    )
    assert rec["cause"]["type"] == "quota.set"
    assert _record(_value("audit.command_applied", "token:a", tenant="globex"), q) is None
    assert _record(b"not json", q) is None
    assert _record(b"[1, 2]", q) is None
    assert _record(None, q) is None
    assert _record(_value("audit.correction", "x", time="noon"), q) is None


def test_filters_are_exact() -> None:
    rec = _record(_value("audit.command_applied", "token:a"), AuditQuery("acme"))
    assert rec is not None
    assert match(rec, AuditQuery("acme", actor="token:a"))
    assert not match(rec, AuditQuery("acme", actor="token:"))
    assert match(rec, AuditQuery("acme", type="audit.command_applied"))
    assert not match(rec, AuditQuery("acme", type="audit.correction"))
    at = rec["_us"]
    assert match(rec, AuditQuery("acme", since_us=at, until_us=at))
    assert not match(rec, AuditQuery("acme", since_us=at + 1))
    assert not match(rec, AuditQuery("acme", until_us=at - 1))
