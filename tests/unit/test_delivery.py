"""The delivery worker's pure parts: configuration, routing, backoff, rate limit, signing,
payloads, idempotency keys, redaction and the commit point."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from novaquota.schemas.exceptions import DecodeError
from novaquota.streams.delivery.backoff import delay_after, gives_up
from novaquota.streams.delivery.channels import (
    email_message,
    pagerduty_event,
    slack_payload,
    webhook_body,
    webhook_headers,
)
from novaquota.streams.delivery.cli import main as deliver_main
from novaquota.streams.delivery.cli import summary
from novaquota.streams.delivery.config import (
    EmailChannel,
    RetryPolicy,
    Route,
    load_config,
    parse_config,
)
from novaquota.streams.delivery.exceptions import ConfigError
from novaquota.streams.delivery.ratelimit import TokenBucket
from novaquota.streams.delivery.records import parse_record
from novaquota.streams.delivery.routing import channels_for
from novaquota.streams.delivery.signing import sign, verify
from novaquota.streams.delivery.worker import Redactor, _Partition, decode_marks, encode_marks
from tests.support.delivery import alert_record, resolved_record, violation_record

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "delivery.yaml"
ENV = {
    "NOVAQUOTA_WEBHOOK_KEY": "k-webhook-123",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/SECRETPATH",
    "SMTP_PASSWORD": "pw-smtp-456",
}


def _minimal(**channel: Any) -> dict[str, Any]:
    ch = {"type": "webhook", "url": "http://127.0.0.1:1/hook", "secret": {"env": "K"}, **channel}
    return {"channels": {"hook": ch}, "routes": [{"channels": ["hook"]}]}


def _error(raw: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, environ={"K": "key"} if environ is None else environ)
    return str(exc.value)


# --- configuration ---------------------------------------------------------------------------


def test_the_example_file_loads_with_its_secrets(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "delivery.yaml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pagerduty-routing-key").write_text("R0UTING-KEY\n")
    config = load_config(tmp_path / "delivery.yaml", environ=ENV)
    assert set(config.channels) == {"ops-webhook", "slack-capacity", "pagerduty", "oncall-mail"}
    pd = config.channels["pagerduty"]
    assert pd.routing_key.get() == "R0UTING-KEY"  # type: ignore[union-attr]
    assert config.retry_for("pagerduty").max_attempts == 12
    assert config.retry_for("ops-webhook").max_attempts == 8
    mail = config.channels["oncall-mail"]
    assert isinstance(mail, EmailChannel) and mail.sender == "novaquota@example.com"
    shown = json.dumps(summary(config), default=str)
    for secret in (*ENV.values(), "R0UTING-KEY"):
        assert secret not in shown
    assert "SLACK_WEBHOOK_URL" in shown


def test_a_secret_written_in_the_file_is_refused_without_echoing_it() -> None:
    msg = _error(_minimal(secret="hunter2-inline"))
    assert "channels.hook.secret: a secret is never written in the configuration" in msg
    assert "hunter2" not in msg


def test_a_missing_environment_variable_names_the_field_and_the_variable() -> None:
    msg = _error(_minimal(), environ={})
    assert "channels.hook.secret: environment variable K is not set" in msg


def test_a_secret_file_is_read_relative_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-file\n")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_minimal(secret={"file": "key"})))
    config = load_config(path, environ={})
    assert config.channels["hook"].secret.get() == "from-file"  # type: ignore[union-attr]
    path.write_text(json.dumps(_minimal(secret={"file": "nope"})))
    with pytest.raises(ConfigError, match=r"channels.hook.secret: cannot read secret file"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"channels": {"hook": {"type": "fax"}}, "routes": [{"channels": ["hook"]}]},
            "channels.hook: type must be one of webhook, slack, pagerduty, email",
        ),
        (
            {**_minimal(), "routes": [{"channels": ["hook", "pager"]}]},
            "routes[0].channels: unknown channel(s) pager; configured: hook",
        ),
        (
            {**_minimal(), "routes": [{"channels": ["hook"], "min_severity": "loud"}]},
            "routes[0].min_severity: Input should be 'info', 'warning', 'critical' or 'emergency'",
        ),
        (
            {
                **_minimal(),
                "routes": [
                    {"channels": ["hook"], "min_severity": "info", "severities": ["critical"]}
                ],
            },
            "routes[0]: give min_severity or severities, not both",
        ),
        (
            {**_minimal(), "routes": [{"channels": ["hook"], "kinds": ["overlimit"]}]},
            "routes[0].kinds[0]: Input should be",
        ),
        (_minimal(url="not a url"), "channels.hook.url: Input should be a valid URL"),
        (_minimal(colour="red"), "channels.hook.colour: Extra inputs are not permitted"),
        (
            _minimal(rate_limit={"per_second": 0}),
            "channels.hook.rate_limit.per_second: Input should be greater than 0",
        ),
        (
            {**_minimal(), "retry": {"base_seconds": 10, "cap_seconds": 1}},
            "retry: cap_seconds must be at least base_seconds",
        ),
        (
            _minimal(headers={"X-Novaquota-Signature": "forged"}),
            "channels.hook.headers: these headers are set by the worker",
        ),
        ({"channels": {}, "routes": []}, "channels: Dictionary should have at least 1 item"),
    ],
)
def test_invalid_configurations_name_the_field(raw: dict[str, Any], expected: str) -> None:
    assert expected in _error(raw)


def test_email_options_that_exclude_each_other() -> None:
    base = {
        "type": "email",
        "host": "smtp.example.com",
        "from": "a@example.com",
        "to": ["b@example.com"],
    }
    raw = {
        "channels": {"m": {**base, "ssl": True, "starttls": True}},
        "routes": [{"channels": ["m"]}],
    }
    assert "channels.m: ssl and starttls exclude each other" in _error(raw)
    raw = {"channels": {"m": {**base, "username": "u"}}, "routes": [{"channels": ["m"]}]}
    assert "channels.m: username and password go together" in _error(raw)
    raw = {"channels": {"m": {**base, "to": ["nobody"]}}, "routes": [{"channels": ["m"]}]}
    assert "channels.m.to: not mail addresses: nobody" in _error(raw)


def test_an_email_ca_file_must_exist(tmp_path: Path) -> None:
    mail = {
        "type": "email",
        "host": "smtp.example.com",
        "starttls": True,
        "ca_file": "ca.pem",
        "from": "a@example.com",
        "to": ["b@example.com"],
    }
    raw = {"channels": {"m": mail}, "routes": [{"channels": ["m"]}]}
    with pytest.raises(ConfigError, match=r"channels.m.ca_file: .*ca.pem is not a file"):
        parse_config(raw, base_dir=tmp_path, environ={})
    (tmp_path / "ca.pem").write_text("pem")
    config = parse_config(raw, base_dir=tmp_path, environ={})
    assert config.channels["m"].ca_file == tmp_path / "ca.pem"  # type: ignore[union-attr]


def test_a_slack_secret_must_be_a_url() -> None:
    raw = {
        "channels": {"s": {"type": "slack", "url": {"env": "K"}}},
        "routes": [{"channels": ["s"]}],
    }
    assert "channels.s.url: the secret is not an http(s) URL" in _error(raw)


def test_a_file_that_is_not_yaml_reports_the_line_only(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("channels:\n  hook: {secret: hunter2-inline\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert "not valid YAML at line" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_the_cli_refuses_to_start_on_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(_minimal(secret="inline-secret-value")))
    assert deliver_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "channels.hook.secret" in err and "inline-secret-value" not in err
    monkeypatch.delenv("NOVAQUOTA_DELIVERY_CONFIG", raising=False)
    assert deliver_main([]) == 2
    assert "NOVAQUOTA_DELIVERY_CONFIG" in capsys.readouterr().err


# --- routing ---------------------------------------------------------------------------------


def _route(**kw: Any) -> Route:
    return Route(channels=kw.pop("channels", ["c"]), **kw)


def _to(routes: list[Route], **kw: str) -> list[str]:
    record = {
        "type_": "quota.alert",
        "tenant_id": "acme-1",
        "severity": "warning",
        "kind": "threshold",
    }
    return channels_for(routes, **{**record, **kw})  # type: ignore[arg-type]


def test_routing_by_tenant_severity_kind_and_type() -> None:
    assert _to([_route()]) == ["c"]
    assert _to([_route(tenant_ids=["acme-1"])]) == ["c"]
    assert _to([_route(tenant_ids=["acme"])]) == []
    assert _to([_route(tenant_prefixes=["acme-"])]) == ["c"]
    assert _to([_route(tenant_ids=["x"], tenant_prefixes=["acme"])]) == ["c"]
    assert _to([_route(min_severity="warning")]) == ["c"]
    assert _to([_route(min_severity="critical")]) == []
    assert _to([_route(min_severity="critical")], severity="emergency") == ["c"]
    assert _to([_route(severities=["info", "critical"])]) == []
    assert _to([_route(severities=["info", "warning"])]) == ["c"]
    assert _to([_route(kinds=["over_limit"])]) == []
    assert _to([_route(kinds=["over_limit"])], kind="over_limit") == ["c"]
    assert _to([_route(types=["quota.violation"])]) == []
    assert _to([_route(types=["quota.alert"], kinds=["threshold"], min_severity="info")]) == ["c"]


def test_a_record_goes_to_the_channels_of_every_matching_route_once() -> None:
    routes = [
        _route(channels=["a", "b"], tenant_prefixes=["acme"]),
        _route(channels=["b", "c"], min_severity="warning"),
        _route(channels=["d"], min_severity="critical"),
    ]
    assert _to(routes) == ["a", "b", "c"]
    assert _to(routes, tenant_id="globex", severity="info") == []


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_grows_by_the_factor_up_to_the_cap() -> None:
    policy = RetryPolicy(base_seconds=0.5, factor=2, cap_seconds=5, jitter=0)
    assert [delay_after(policy, n) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]
    assert delay_after(policy, 10_000) == 5  # no overflow
    assert delay_after(policy, 1, retry_after=3) == 3  # a receiver's Retry-After counts
    assert delay_after(policy, 1, retry_after=3600) == 5  # up to the cap


def test_backoff_jitter_stays_within_its_share() -> None:
    policy = RetryPolicy(base_seconds=1, factor=2, cap_seconds=60, jitter=0.25)
    rng = random.Random(7)
    delays = [delay_after(policy, 3, rng=rng) for _ in range(500)]
    assert min(delays) >= 3 and max(delays) <= 5
    assert len(set(delays)) > 400


def test_giving_up_after_max_attempts_or_max_age() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_seconds=10)
    assert not gives_up(policy, 2, age_seconds=1, next_delay=1)
    assert gives_up(policy, 3, age_seconds=1, next_delay=1)
    assert gives_up(policy, 1, age_seconds=9.5, next_delay=1)  # the next one would be too old


# --- rate limit ------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate=10, capacity=3, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.1)  # empty: a token in 1/rate s
    clock.now += 0.05
    assert bucket.try_take() == pytest.approx(0.05)
    clock.now += 0.05
    assert bucket.try_take() == 0.0
    clock.now += 60  # idle for a minute: saves up at most the capacity
    assert [bucket.try_take() for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert bucket.try_take() > 0


def test_token_bucket_never_grants_more_than_burst_plus_rate_per_second() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate=20, capacity=5, clock=clock)
    granted = []
    for _ in range(10_000):  # callers asking every millisecond for 10 s
        if bucket.try_take() == 0.0:
            granted.append(clock.now)
        clock.now += 0.001
    for i, t in enumerate(granted):
        in_window = sum(1 for u in granted[i:] if u < t + 1.0)
        assert in_window <= 5 + 20
    assert len(granted) == pytest.approx(5 + 20 * 10, abs=2)


def test_token_bucket_take_waits_for_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # time passes only while waiting
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr("streams.delivery.ratelimit.asyncio.sleep", fake_sleep)

    async def takes() -> list[float]:
        bucket = TokenBucket(rate=50, capacity=1, clock=clock)
        return [await bucket.take() for _ in range(3)]

    assert asyncio.run(takes()) == [0.0, pytest.approx(0.02), pytest.approx(0.02)]
    assert slept == [pytest.approx(0.02), pytest.approx(0.02)]


# --- signing ---------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("key", 1700000000, body) == f"v1={expected}"


def test_verify_rejects_a_tampered_body_another_key_and_an_old_timestamp() -> None:
    body = b'{"a":1}'
    sig = sign("key", 1700000000, body)
    assert verify("key", "1700000000", sig, body, now=1700000010)
    assert not verify("key", "1700000000", sig, b'{"a":2}', now=1700000010)
    assert not verify("other", "1700000000", sig, body, now=1700000010)
    assert not verify("key", "1700000000", sig, body, now=1700000000 + 301)
    assert not verify("key", "1700000001", sig, body, now=1700000010)
    assert not verify("key", None, sig, body, now=1700000010)
    assert not verify("key", "soon", sig, body, now=1700000010)
    rotated = f"{sign('old', 1700000000, body)}, {sig}"
    assert verify("key", "1700000000", rotated, body, now=1700000010)


# --- records and payloads --------------------------------------------------------------------


def test_idempotency_keys_come_from_the_deterministic_ids() -> None:
    v = parse_record(violation_record("acme", "v-1")[1])
    r = parse_record(resolved_record("acme", "v-1")[1])
    a = parse_record(alert_record("acme", "a-1")[1])
    assert v.idempotency_key == "quota.violation:v-1"
    assert r.idempotency_key == "quota.violation_resolved:v-1"
    assert a.idempotency_key == "quota.alert:a-1"
    assert v.dedup_key == r.dedup_key == "v-1"
    assert (v.tenant_id, v.severity, v.kind) == ("acme", "critical", "over_limit")
    with pytest.raises(DecodeError):
        parse_record(b"{}")
    with pytest.raises(DecodeError):
        parse_record(None)


def test_pagerduty_trigger_and_resolve_share_the_dedup_key() -> None:
    v = parse_record(violation_record("acme", "v-1")[1])
    r = parse_record(resolved_record("acme", "v-1")[1])
    trigger = pagerduty_event(v, "RK", "novaquota")
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == "v-1"
    assert trigger["routing_key"] == "RK"
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["group"] == "acme"
    assert payload["class"] == "over_limit" and payload["component"] == "cpu"
    assert payload["summary"].startswith("CRITICAL over_limit violation on cpu for tenant acme")
    assert pagerduty_event(r, "RK", "novaquota") == {
        "routing_key": "RK",
        "event_action": "resolve",
        "dedup_key": "v-1",
    }
    emergency = parse_record(violation_record("acme", "v-2", severity="emergency")[1])
    assert pagerduty_event(emergency, "RK", "x")["payload"]["severity"] == "critical"


def test_webhook_body_is_stable_exact_and_signed() -> None:
    v = parse_record(violation_record("acme", "v-1")[1])
    body = webhook_body(v)
    assert body == webhook_body(parse_record(violation_record("acme", "v-1")[1]))
    doc = json.loads(body, parse_float=Decimal)
    assert doc["idempotency_key"] == "quota.violation:v-1"
    assert doc["event"]["data"]["usage"] == 6 and doc["event"]["data"]["limit"] == 4
    assert doc["event"]["type"] == "quota.violation"
    assert b'"usage":6' in body
    headers = webhook_headers(v, body, "key", timestamp=1700000000, attempt=2)
    assert headers["Idempotency-Key"] == "quota.violation:v-1"
    assert headers["X-Novaquota-Attempt"] == "2"
    assert headers["X-Novaquota-Timestamp"] == "1700000000"
    assert verify("key", "1700000000", headers["X-Novaquota-Signature"], body, now=1700000000)


def test_slack_payload_has_text_and_blocks() -> None:
    a = parse_record(alert_record("acme", "a-1")[1])
    payload = slack_payload(a)
    assert payload["text"].startswith("WARNING threshold alert on cpu for tenant acme")
    assert [b["type"] for b in payload["blocks"]] == ["section", "section", "context"]
    assert "quota.alert:a-1" in payload["blocks"][-1]["elements"][0]["text"]


def test_email_message_id_is_derived_from_the_idempotency_key() -> None:
    cfg = EmailChannel(type="email", host="h", sender="a@example.com", to=["b@example.com"])
    v = parse_record(violation_record("acme", "v-1")[1])
    first, again = email_message(v, cfg), email_message(v, cfg)
    assert first["Message-ID"] == again["Message-ID"]
    other = email_message(parse_record(resolved_record("acme", "v-1")[1]), cfg)
    assert other["Message-ID"] != first["Message-ID"]
    assert first["X-Novaquota-Idempotency-Key"] == "quota.violation:v-1"
    assert first["Subject"].startswith("[novaquota] CRITICAL over_limit violation")
    assert "usage: 6" in first.get_content()


# --- redaction and offsets -------------------------------------------------------------------


def test_redactor_removes_every_secret() -> None:
    redact = Redactor(["abc", "abcdef", ""])
    assert redact("x abcdef y abc z") == "x *** y *** z"
    assert len(redact("e" * 5000)) == 1024


def test_the_commit_point_is_the_first_record_not_done() -> None:
    part = _Partition()
    assert part.commit_point() is None
    entries = [part.add(offset, ["a"]) for offset in (10, 11, 12)]
    assert part.commit_point() == 10
    entries[1].finish("a")  # done out of order: the commit waits for offset 10
    assert part.commit_point() == 10 and part.in_flight == 2
    entries[0].finish("a")
    assert part.commit_point() == 12
    entries[2].finish("a")
    assert part.commit_point() == 13
    part.add(13, ())  # unrouted: done at once
    assert part.commit_point() == 14 and part.in_flight == 0


def test_channel_marks_say_what_each_channel_has_done_past_the_commit_point() -> None:
    part = _Partition()
    e10 = part.add(10, ["slow", "fast"])
    e11 = part.add(11, ["slow", "fast"])
    e12 = part.add(12, ["slow", "fast"])
    part.add(13, ["slow"])
    e10.finish("fast")
    e12.finish("fast")
    assert part.commit_point() == 10
    # fast: 10 done, 11 pending, 12 done and 13 not routed to it
    assert part.channel_marks(["slow", "fast", "idle"]) == {
        "fast": [(10, 10), (12, 13)],
        "idle": [(10, 13)],
    }
    e10.finish("slow")
    e11.finish("fast")
    assert part.commit_point() == 11
    assert part.channel_marks(["slow", "fast"]) == {"fast": [(11, 13)]}
    marks = {"fast": [(11, 13)], "slow": [(20, 25), (30, 30)]}
    assert decode_marks(encode_marks(marks)) == marks


def test_a_restarted_worker_skips_what_the_last_commit_marked_done() -> None:
    part = _Partition(skip=decode_marks(encode_marks({"fast": [(10, 10), (12, 14)]})))
    assert [part.already_done("fast", o) for o in range(9, 16)] == [
        False,
        True,
        False,
        True,
        True,
        True,
        False,
    ]
    assert not part.already_done("slow", 10)
    part.add(10, ["slow"])  # fast skipped for 10
    part.add(11, ["slow", "fast"])
    # nothing read past 11 yet: the earlier worker's ranges still hold
    assert part.channel_marks(["slow", "fast"]) == {"fast": [(10, 10), (12, 14)]}


def test_commit_metadata_is_tolerant_and_bounded() -> None:
    for junk in (None, "", "x", "[]", '{"v": 2, "done": {"a": [[1, 2]]}}', '{"v": 1, "done": 3}'):
        assert decode_marks(junk) == {}
    assert decode_marks('{"v": 1, "done": {"a": [[1, 2], [5, 4], ["x", 1]], "b": []}}') == {
        "a": [(1, 2)]
    }
    assert encode_marks({}) == ""
    many = {"ch": [(i * 3, i * 3 + 1) for i in range(1000)]}
    text = encode_marks(many)
    assert 0 < len(text) <= 3000
    kept = decode_marks(text)["ch"]
    assert kept == many["ch"][: len(kept)]  # the lowest ranges kept, the highest left out


def test_topics_create_makes_the_delivery_dead_letter_topic() -> None:
    from novaquota.ops.topics import THIRTY_DAYS_MS, catalogue
    from novaquota.streams.settings import Settings

    specs = {s.name: s for s in catalogue(Settings(topic_prefix="x."))}
    spec = specs["x.delivery-dead-letter"]
    assert spec.config == {"retention.ms": THIRTY_DAYS_MS, "cleanup.policy": "delete"}
    assert Settings(topic_prefix="x.").topics.delivery_dead_letter == "x.delivery-dead-letter"
