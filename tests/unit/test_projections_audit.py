"""The audit endpoint's pure parts: query parsing, page tokens, record decoding and filters."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from novaquota.projections.audit import (
    CHUNK,
    AuditQuery,
    AuditReader,
    ReplayReports,
    _record,
    decode_page_token,
    encode_page_token,
    home_partition,
    match,
    parse_query,
)
from novaquota.projections.exceptions import QueryError
from novaquota.streams.agents import home_partition as worker_home_partition
from novaquota.streams.errors import ApiError
from novaquota.streams.settings import Settings


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


# --- the reader over a log in memory ----------------------------------------------------------


class _Record:
    def __init__(self, offset: int, value: bytes | None) -> None:
        self.offset, self.value = offset, value


class _OffsetAndTimestamp:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FakeConsumer:
    """What ``AuditReader`` asks of an aiokafka consumer, over one partition in memory
    (``log``: (broker timestamp ms, value) per offset; ``first``: the first offset kept)."""

    def __init__(self, log: list[tuple[int, bytes | None]], partitions: int, first: int = 0):
        self.log, self.partitions, self.first = log, partitions, first
        self.pos = 0
        self.read = 0

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def assign(self, tps: list[TopicPartition]) -> None:
        self.tps = tps

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.first)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, len(self.log))

    async def offsets_for_times(self, times: dict[TopicPartition, int]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for tp, ms in times.items():
            at = next(
                (o for o, (ts, _) in enumerate(self.log) if o >= self.first and ts >= ms), None
            )
            out[tp] = None if at is None else _OffsetAndTimestamp(at)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, tp: TopicPartition, timeout_ms: int, max_records: int) -> Any:
        chunk = [
            _Record(o, self.log[o][1]) for o in range(self.pos, min(len(self.log), self.pos + 100))
        ]
        self.pos += len(chunk)
        self.read += len(chunk)
        return {tp: chunk}


BASE_MS = 1_793_577_600_000  # 2026-11-02T00:00:00Z


def _log(n: int, partitions: int) -> list[tuple[int, bytes | None]]:
    """n records, one a minute: acme's every 3rd (alternately by alice and bob, the 30th a
    correction), the others another tenant's (with a key on the same partition or not: the
    reader looks at data.tenant_id), a few unreadable."""
    out: list[tuple[int, bytes | None]] = []
    for i in range(n):
        ms = BASE_MS + i * 60_000
        t = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if i % 3 == 0:
            kind = "audit.correction" if i == 30 else "audit.command_applied"
            out.append((ms, _value(kind, "alice" if i % 2 else "bob", time=t)))
        elif i % 7 == 0:
            out.append((ms, b"\xff not json"))
        else:
            out.append((ms, _value("audit.command_applied", "alice", tenant="other", time=t)))
    return out


def _reader(consumer: FakeConsumer, scan_max: int = 50_000) -> AuditReader:
    reader = AuditReader(Settings(topic_prefix="unit."), scan_max)
    reader._consumer = consumer  # type: ignore[assignment]
    return reader


def test_pages_are_read_backwards_a_chunk_at_a_time() -> None:
    consumer = FakeConsumer(_log(6000, 4), 4)
    reader = _reader(consumer)
    q = AuditQuery("acme", page_size=10)
    body = asyncio.run(reader.page(q))
    assert [r["offset"] for r in body["records"]] == list(range(5997, 5967, -3))
    assert body["partition"] == home_partition("acme", 4)
    # one chunk read for a page of a tenant with many records, not the topic
    assert body["scanned"] == CHUNK and consumer.read == CHUNK
    # the next page goes on below the last record, and the pages cover every record once
    offsets = [r["offset"] for r in body["records"]]
    token = body["next_page_token"]
    while token:
        q2 = parse_query({"page_size": "200", "page_token": token}, "acme")
        assert q2.before is not None
        body = asyncio.run(reader.page(AuditQuery("acme", page_size=10, before=q2.before)))
        offsets += [r["offset"] for r in body["records"]]
        token = body["next_page_token"]
    assert offsets == list(range(5997, -1, -3))


def test_filters_and_the_since_floor() -> None:
    consumer = FakeConsumer(_log(6000, 4), 4)
    reader = _reader(consumer)
    body = asyncio.run(reader.page(AuditQuery("acme", type="audit.correction", page_size=5)))
    assert [r["offset"] for r in body["records"]] == [30] and body["next_page_token"] is None
    body = asyncio.run(reader.page(AuditQuery("acme", actor="alice", page_size=200)))
    assert {r["actor"] for r in body["records"]} == {"alice"} and len(body["records"]) == 200
    # since: the records written before since minus the clock skew (300 s) are not read
    since_us = (BASE_MS + 5900 * 60_000) * 1000
    consumer.read = 0
    body = asyncio.run(reader.page(AuditQuery("acme", since_us=since_us, page_size=200)))
    assert [r["offset"] for r in body["records"]] == list(range(5997, 5899, -3))
    assert body["next_page_token"] is None
    assert consumer.read == 6000 - 5895  # from 5 minutes before since
    until_us = (BASE_MS + 60 * 60_000) * 1000
    body = asyncio.run(reader.page(AuditQuery("acme", until_us=until_us, page_size=200)))
    assert [r["offset"] for r in body["records"]] == list(range(60, -1, -3))


def test_a_request_reads_at_most_its_scan_budget() -> None:
    """A rare match far down a busy partition: a short page and a token to go on from."""
    consumer = FakeConsumer(_log(6000, 4), 4)
    reader = _reader(consumer, scan_max=2000)
    q = AuditQuery("acme", type="audit.correction")
    body = asyncio.run(reader.page(q))
    assert body["records"] == [] and body["scanned"] == 2000 and consumer.read == 2000
    assert decode_page_token(body["next_page_token"], q) == 4000
    found = []
    before: int | None = 4000
    for _ in range(3):
        body = asyncio.run(reader.page(AuditQuery("acme", type="audit.correction", before=before)))
        found += [r["offset"] for r in body["records"]]
        token = body["next_page_token"]
        if token is None:
            break
        before = decode_page_token(token, q)
    assert found == [30] and token is None


def test_an_empty_or_truncated_partition() -> None:
    reader = _reader(FakeConsumer([], 4))
    body = asyncio.run(reader.page(AuditQuery("acme")))
    assert body["records"] == [] and body["next_page_token"] is None
    consumer = FakeConsumer(_log(600, 4), 4, first=300)  # retention removed the first 300
    body = asyncio.run(_reader(consumer).page(AuditQuery("acme", page_size=200)))
    assert [r["offset"] for r in body["records"]] == list(range(597, 299, -3))
    assert body["next_page_token"] is None


# --- replay reports ----------------------------------------------------------------------------


def test_replays_are_bounded_in_number_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import novaquota.projections.replay as replay_mod

    started = threading.Event()
    release = threading.Event()

    async def slow_replay(settings: Any, until_us: int, *, tenant: str | None = None) -> Any:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        raise AssertionError("not reached: cancelled by the timeout")

    monkeypatch.setattr(replay_mod, "replay", slow_replay)
    reports = ReplayReports(Settings(topic_prefix="unit."), limit=1, timeout=0.5)

    async def scenario() -> None:
        first = asyncio.ensure_future(reports.report("acme", 0, "json"))
        await asyncio.to_thread(started.wait, 5)
        with pytest.raises(ApiError) as busy:
            await reports.report("acme", 0, "json")
        assert (busy.value.status, busy.value.code) == (503, "busy")
        assert busy.value.headers() == {"Retry-After": "1"}
        with pytest.raises(ApiError) as late:
            await first
        assert (late.value.status, late.value.code) == (504, "replay_timeout")
        assert reports.running == 0

    asyncio.run(scenario())
    release.set()
    with pytest.raises(ApiError) as off:
        asyncio.run(ReplayReports(Settings(), limit=0).report("acme", 0, "json"))
    assert off.value.status == 503
