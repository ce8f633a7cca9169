"""The delivery worker against a real broker and local receivers, run as the real
``novaquota deliver`` process: routing to every channel, retries, dead letters, secrets kept out
of everything it writes, a kill -9 mid-batch, and violations made by a real enforcement worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Stack
from tests.support.delivery import (
    DeliveryProcess,
    Receivers,
    SecureSmtp,
    alert_record,
    resolved_record,
    tls_certificate,
    violation_record,
)
from tests.support.events import command, vm_created, vm_deleted
from tests.support.kafka import produce_raw

pytestmark = pytest.mark.integration

HOOK_KEY = "whsec-acme-3f9a1c0d5e"
OTHER_KEY = "whsec-initech-77b2e9"
WRONG_KEY = "whsec-wrong-0c4d11"
PD_KEY = "pd-routing-key-R0UT1NG"
SLACK_PATH_SECRET = "T000/B000/slackpathsecret"
SMTP_PASSWORD = "smtp-pass-9x8y7z"


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    r = Receivers(
        hook_keys={
            "acme": HOOK_KEY,
            "initech": OTHER_KEY,
            "all": HOOK_KEY,
            "flaky": HOOK_KEY,
            "down": HOOK_KEY,
        },
        routing_key=PD_KEY,
    ).start()
    yield r
    r.stop()


@pytest.fixture
def deliver(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> Iterator[Callable[..., tuple[Stack, DeliveryProcess]]]:
    procs: list[DeliveryProcess] = []

    def make(
        config: dict[str, Any], env: dict[str, str], *, stack: Stack | None = None
    ) -> tuple[Stack, DeliveryProcess]:
        s = stack or stack_factory(2)
        path = tmp_path / f"delivery-{len(procs)}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = DeliveryProcess(
            bootstrap=s.bootstrap,
            topic_prefix=s.prefix,
            config=path,
            log_path=tmp_path / "deliver.log",
            env=env,
        )
        procs.append(proc)
        return s, proc

    yield make
    for p in procs:
        p.stop()


def _produce(stack: Stack, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    asyncio.run(
        produce_raw(stack.bootstrap, stack.topic(topic), [(k, v, None) for k, v in records])
    )


def _fast_retry(**kw: Any) -> dict[str, Any]:
    return {
        "base_seconds": 0.05,
        "factor": 2,
        "cap_seconds": 0.4,
        "max_attempts": 5,
        "max_age_seconds": 30,
        "jitter": 0,
        **kw,
    }


def _secrets_env() -> dict[str, str]:
    return {
        "HOOK_ACME_KEY": HOOK_KEY,
        "HOOK_WRONG_KEY": WRONG_KEY,
        "PD_KEY": PD_KEY,
        "SMTP_PASSWORD": SMTP_PASSWORD,
    }


def test_every_channel_receives_what_its_routes_say(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]], receivers: Receivers, tmp_path: Path
) -> None:
    slack_url_file = tmp_path / "slack-url"
    slack_url_file.write_text(f"{receivers.url}/slack/ops?token={SLACK_PATH_SECRET}\n")
    config = {
        "retry": _fast_retry(),
        "channels": {
            "hook-acme": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/acme",
                "secret": {"env": "HOOK_ACME_KEY"},
            },
            # signs with a key the receiver does not know: 401, dead-lettered at once
            "hook-bad": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/initech",
                "secret": {"env": "HOOK_WRONG_KEY"},
            },
            "slack-ops": {"type": "slack", "url": {"file": str(slack_url_file)}},
            "pager": {
                "type": "pagerduty",
                "routing_key": {"env": "PD_KEY"},
                "url": f"{receivers.url}/pd/v2/enqueue",
            },
            "mail": {
                "type": "email",
                "host": "127.0.0.1",
                "port": receivers.smtp_port,
                "from": "quota@example.com",
                "to": ["oncall@example.com"],
            },
        },
        "routes": [
            {"name": "acme", "tenant_prefixes": ["acme-"], "channels": ["hook-acme"]},
            {
                "name": "paging",
                "min_severity": "critical",
                "types": ["quota.violation", "quota.violation_resolved"],
                "channels": ["pager"],
            },
            {
                "name": "thresholds",
                "kinds": ["threshold"],
                "types": ["quota.alert"],
                "channels": ["slack-ops"],
            },
            {"name": "globex", "tenant_ids": ["globex"], "channels": ["mail"]},
            {"name": "initech", "tenant_ids": ["initech"], "channels": ["hook-bad"]},
        ],
    }
    stack, proc = deliver(config, _secrets_env())
    _produce(
        stack,
        "quota-violations",
        [
            violation_record("acme-1", "v-acme"),
            violation_record("globex", "v-globex", severity="warning", kind="window_exceeded"),
            violation_record("umbrella", "v-umbrella", severity="info", kind="window_exceeded"),
            resolved_record("acme-1", "v-acme"),
        ],
    )
    _produce(
        stack,
        "quota-alerts",
        [
            alert_record("acme-2", "a-acme"),
            alert_record("globex", "a-globex", severity="critical", kind="forecast"),
            alert_record("initech", "a-initech", severity="info"),
            (b"junk", b"{not json"),
        ],
    )
    proc.start()
    stack.wait_for(
        lambda: len(stack.consume("delivery-dead-letter", expect=2, timeout=5)) >= 2, timeout=60
    )
    stack.wait_for(
        lambda: (
            len(receivers.mail_keys_seen()) >= 2
            and len(receivers.pd_events()) >= 2
            and len(receivers.hook_keys_seen("acme")) >= 3
            and len(receivers.slack_keys_seen("ops")) >= 2
        ),
        timeout=60,
    )
    stack.wait_for(lambda: proc.health().get("in_flight") == 0, timeout=30)

    assert sorted(receivers.hook_keys_seen("acme")) == [
        "quota.alert:a-acme",
        "quota.violation:v-acme",
        "quota.violation_resolved:v-acme",
    ]
    assert [(e["event_action"], e["dedup_key"]) for e in receivers.pd_events()] == [
        ("trigger", "v-acme"),
        ("resolve", "v-acme"),
    ]
    trigger = receivers.pd_events()[0]
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["custom_details"]["violation_id"] == "v-acme"
    assert sorted(receivers.slack_keys_seen("ops")) == [
        "quota.alert:a-acme",
        "quota.alert:a-initech",
    ]
    assert sorted(receivers.mail_keys_seen()) == [
        "quota.alert:a-globex",
        "quota.violation:v-globex",
    ]
    assert receivers.hooks["initech"] == [] and receivers.rejected["initech"] == 1

    dead = stack.consume("delivery-dead-letter", expect=2, timeout=10)
    assert len(dead) == 2
    by_channel = {dict(r.headers)["delivery.channel"].decode(): r for r in dead}
    bad = dict(by_channel["hook-bad"].headers)
    assert bad["delivery.attempts"] == b"1"
    assert bad["delivery.error"] == b"webhook: HTTP 401"
    assert bad["delivery.idempotency_key"] == b"quota.alert:a-initech"
    assert bad["delivery.topic"] == stack.topic("quota-alerts").encode()
    assert by_channel["hook-bad"].value == alert_record("initech", "a-initech", severity="info")[1]
    junk = dict(by_channel["-"].headers)
    assert junk["delivery.error"].startswith(b"undecodable (malformed_json)")
    assert by_channel["-"].value == b"{not json"

    assert proc.metric("delivery_unrouted_total", type="quota.violation") == 1
    assert proc.metric("delivery_sent_total", channel="hook-acme", outcome="delivered") == 3
    assert proc.metric("delivery_sent_total", channel="hook-bad", outcome="dead_lettered") == 1
    assert proc.metric("delivery_attempts_total", channel="hook-bad", result="permanent_error") == 1
    assert proc.metric("delivery_dead_letter_total", channel="-") == 1
    assert proc.metric("delivery_invalid_total", reason="malformed_json") == 1

    # no secret in what the worker wrote: dead-letter headers, logs, metrics, health
    written = [proc.get("/metrics")[1], proc.get("/healthz")[1]]
    proc.stop()
    written.append(proc.log_path.read_text(errors="replace"))
    written += [repr(r.headers) for r in dead]
    for secret in (HOOK_KEY, WRONG_KEY, PD_KEY, SLACK_PATH_SECRET):
        assert all(secret not in text for text in written), secret


def test_a_receiver_that_fails_three_times_then_succeeds(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]], receivers: Receivers
) -> None:
    receivers.fail_first["flaky"] = 3
    config = {
        "retry": _fast_retry(max_attempts=6),
        "channels": {
            "flaky": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/flaky",
                "secret": {"env": "HOOK_ACME_KEY"},
            }
        },
        "routes": [{"channels": ["flaky"]}],
    }
    stack, proc = deliver(config, _secrets_env())
    _produce(stack, "quota-alerts", [alert_record("acme-1", "a-flaky")])
    proc.start()
    stack.wait_for(lambda: receivers.hook_keys_seen("flaky"), timeout=60)
    stack.wait_for(
        lambda: proc.metric("delivery_sent_total", channel="flaky", outcome="delivered") == 1,
        timeout=30,
    )
    assert receivers.hook_keys_seen("flaky") == ["quota.alert:a-flaky"]
    assert receivers.requests["flaky"] == 4
    assert proc.metric("delivery_attempts_total", channel="flaky", result="retryable_error") == 3
    assert proc.metric("delivery_attempts_total", channel="flaky", result="ok") == 1
    assert proc.metric("delivery_dead_letter_total", channel="flaky") == 0
    assert stack.consume("delivery-dead-letter", timeout=5, idle=1) == []


def test_a_channel_that_stays_down_goes_to_the_dead_letter_topic_and_the_rest_goes_on(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]], receivers: Receivers
) -> None:
    receivers.down.add("down")
    n = 40
    config = {
        "retry": _fast_retry(max_attempts=3),
        "channels": {
            "down": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/down",
                "secret": {"env": "HOOK_ACME_KEY"},
            },
            # nothing listens there: connection refused on every attempt
            "nowhere": {
                "type": "slack",
                "url": {"env": "SLACK_NOWHERE"},
                "retry": _fast_retry(max_attempts=2),
            },
            # the fake PagerDuty answers 400 to an unknown routing key: no retry
            "pager-wrong-key": {
                "type": "pagerduty",
                "routing_key": {"env": "PD_WRONG"},
                "url": f"{receivers.url}/pd/v2/enqueue",
            },
            "all": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/all",
                "secret": {"env": "HOOK_ACME_KEY"},
                "rate_limit": {"per_second": 20, "burst": 5},
            },
        },
        "routes": [
            {"channels": ["all"]},
            {"tenant_ids": ["t-0"], "channels": ["down", "nowhere", "pager-wrong-key"]},
        ],
    }
    env = {
        **_secrets_env(),
        "SLACK_NOWHERE": f"http://127.0.0.1:{receivers.smtp_port + 1}/{SLACK_PATH_SECRET}",
        "PD_WRONG": "pd-wrong-routing-key-XYZ",
    }
    stack, proc = deliver(config, env)
    _produce(stack, "quota-alerts", [alert_record(f"t-{i % 4}", f"a-{i}") for i in range(n)])
    proc.start()
    # t-0 has n/4 records, each dead-lettered on three channels
    expected_dead = 3 * (n // 4)
    dead = stack.wait_for(
        lambda: (
            d
            if len(d := stack.consume("delivery-dead-letter", expect=expected_dead, timeout=10))
            >= expected_dead
            else None
        ),
        timeout=120,
    )
    stack.wait_for(lambda: len(receivers.hook_keys_seen("all")) >= n, timeout=60)
    assert sorted(receivers.hook_keys_seen("all")) == sorted(f"quota.alert:a-{i}" for i in range(n))

    per_channel: dict[str, list[dict[str, bytes]]] = {}
    for r in dead:
        h = dict(r.headers)
        per_channel.setdefault(h["delivery.channel"].decode(), []).append(h)
    assert {c: len(v) for c, v in per_channel.items()} == {
        "down": n // 4,
        "nowhere": n // 4,
        "pager-wrong-key": n // 4,
    }
    assert {h["delivery.attempts"] for h in per_channel["down"]} == {b"3"}
    assert {h["delivery.error"] for h in per_channel["down"]} == {b"webhook: HTTP 503"}
    assert {h["delivery.attempts"] for h in per_channel["nowhere"]} == {b"2"}
    assert {h["delivery.error"] for h in per_channel["nowhere"]} == {
        b"slack: request failed (ClientConnectorError)"
    }
    assert {h["delivery.attempts"] for h in per_channel["pager-wrong-key"]} == {b"1"}
    assert {h["delivery.error"] for h in per_channel["pager-wrong-key"]} == {b"pagerduty: HTTP 400"}
    assert sorted(h["delivery.idempotency_key"].decode() for h in per_channel["down"]) == sorted(
        f"quota.alert:a-{i}" for i in range(0, n, 4)
    )
    assert receivers.requests["down"] == 3 * (n // 4)
    assert proc.metric("delivery_dead_letter_total", channel="down") == n // 4
    assert proc.metric("delivery_sent_total", channel="down", outcome="dead_lettered") == n // 4
    assert proc.metric("delivery_attempts_total", channel="down", result="retryable_error") == (
        3 * (n // 4)
    )

    # the rate limit: in any one-second span the receiver saw at most burst + rate requests
    times = sorted(receivers.hook_times["all"])
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    print(f"\nrate limit 20/s burst 5: at most {busiest} requests in any 1 s span")
    assert busiest <= 5 + 20 + 2  # burst + rate x 1 s, +2 for jitter between send and arrival
    assert proc.metric("delivery_rate_limited_seconds_total", channel="all") > 0

    written = [proc.get("/metrics")[1], proc.get("/healthz")[1]]
    proc.stop()
    written.append(proc.log_path.read_text(errors="replace"))
    written += [repr(r.headers) for r in dead]
    for secret in (HOOK_KEY, SLACK_PATH_SECRET, "pd-wrong-routing-key-XYZ"):
        assert all(secret not in text for text in written), secret


def test_kill_9_mid_batch_then_restart_delivers_everything_at_least_once(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]],
    receivers: Receivers,
    stack_factory: Callable[..., Stack],
) -> None:
    n = 120  # violations (each with its resolve) and as many alerts
    config = {
        "retry": _fast_retry(),
        "channels": {
            "all": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/all",
                "secret": {"env": "HOOK_ACME_KEY"},
                "rate_limit": {"per_second": 60, "burst": 10},
            },
            "pager": {
                "type": "pagerduty",
                "routing_key": {"env": "PD_KEY"},
                "url": f"{receivers.url}/pd/v2/enqueue",
                "rate_limit": {"per_second": 60, "burst": 10},
            },
        },
        "routes": [
            {"channels": ["all"]},
            {"types": ["quota.violation", "quota.violation_resolved"], "channels": ["pager"]},
        ],
    }
    stack, first = deliver(config, _secrets_env(), stack=stack_factory(4))
    violations = [violation_record(f"k-{i % 8}", f"v-{i}", t=i) for i in range(n)]
    resolves = [resolved_record(f"k-{i % 8}", f"v-{i}", t=i + 30) for i in range(n)]
    # a tenant's violations and resolves share a partition: each resolve after its trigger
    ordered = [r for pair in zip(violations, resolves, strict=True) for r in pair]
    _produce(stack, "quota-violations", ordered)
    _produce(stack, "quota-alerts", [alert_record(f"k-{i % 8}", f"a-{i}") for i in range(n)])
    expected = {f"quota.violation:v-{i}" for i in range(n)}
    expected |= {f"quota.violation_resolved:v-{i}" for i in range(n)}
    expected |= {f"quota.alert:a-{i}" for i in range(n)}

    first.start()
    stack.wait_for(lambda: len(receivers.hook_keys_seen("all")) >= len(expected) // 3, timeout=120)
    first.kill9()
    at_kill = len(receivers.hook_keys_seen("all"))
    assert at_kill < len(expected), "the kill came after the whole batch"

    _, second = deliver(config, _secrets_env(), stack=stack)
    second.start()
    stack.wait_for(lambda: set(receivers.hook_keys_seen("all")) >= expected, timeout=180)
    stack.wait_for(
        lambda: (
            {(e["event_action"], e["dedup_key"]) for e in receivers.pd_events()}
            >= {(a, f"v-{i}") for i in range(n) for a in ("trigger", "resolve")}
        ),
        timeout=120,
    )
    stack.wait_for(lambda: second.health().get("in_flight") == 0, timeout=60)
    skipped = {ch: second.metric("delivery_skipped_total", channel=ch) for ch in ("all", "pager")}
    second.stop()

    hook = receivers.hook_keys_seen("all")
    assert set(hook) == expected  # nothing lost, nothing invented
    pd = receivers.pd_events()
    by_key: dict[str, list[str]] = {}
    for e in pd:
        by_key.setdefault(e["dedup_key"], []).append(e["event_action"])
    assert set(by_key) == {f"v-{i}" for i in range(n)}
    for key, actions in by_key.items():
        # every resolve matched to its trigger, and a redelivered trigger is followed by its
        # resolve again: the incident ends resolved
        assert actions[0] == "trigger" and actions[-1] == "resolve", (key, actions)
    hook_dupes = len(hook) - len(set(hook))
    pd_dupes = len(pd) - 2 * n
    print(
        f"\nkill -9 after {at_kill} of {len(expected)} webhook deliveries: duplicates that "
        f"reached the receivers: webhook {hook_dupes}, pagerduty {pd_dupes}; read again but "
        f"not sent again (marked done in the last commit): {skipped}"
    )
    assert hook_dupes >= 0 and pd_dupes >= 0


def test_violations_of_a_real_enforcement_worker_reach_pagerduty_and_the_webhook(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]],
    receivers: Receivers,
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    config = {
        "retry": _fast_retry(),
        "channels": {
            "pager": {
                "type": "pagerduty",
                "routing_key": {"env": "PD_KEY"},
                "url": f"{receivers.url}/pd/v2/enqueue",
            },
            "acme": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/acme",
                "secret": {"env": "HOOK_ACME_KEY"},
            },
        },
        "routes": [
            {
                "min_severity": "critical",
                "types": ["quota.violation", "quota.violation_resolved"],
                "channels": ["pager"],
            },
            {"tenant_ids": ["acme"], "channels": ["acme"]},
        ],
    }
    _, proc = deliver(config, _secrets_env(), stack=stack)
    proc.start()
    quota = {
        "level": "tenant",
        "entity_id": "acme",
        "tenant_id": "acme",
        "resource_type": "cpu",
        "limit": 4,
    }
    stack.produce("quota-commands", [command("quota.set", quota, t=0)])
    stack.wait_for(lambda: stack.get("/api/v1/quotas?entity_id=acme")[1]["quotas"])
    stack.produce(
        "resource-events",
        [
            vm_created("acme", "a", cpu=3, t=10),  # 75 %
            vm_created("acme", "b", cpu=2, t=20),  # 125 %: over_limit, threshold alerts
            vm_deleted("acme", "b", t=30),  # resolved
        ],
    )
    out = stack.wait_for(
        lambda: o if len(o := stack.outputs("quota-violations", idle=1)) >= 2 else None
    )
    vid = out[0]["data"]["violation_id"]
    assert [e["type"] for e in out] == ["quota.violation", "quota.violation_resolved"]
    alerts = stack.outputs("quota-alerts", idle=1)
    assert alerts, "the enforcement worker wrote no alert"
    stack.wait_for(
        lambda: (
            [(e["event_action"], e["dedup_key"]) for e in receivers.pd_events()]
            == [("trigger", vid), ("resolve", vid)]
        ),
        timeout=60,
    )
    want = {f"quota.violation:{vid}", f"quota.violation_resolved:{vid}"}
    want |= {f"quota.alert:{a['data']['alert_id']}" for a in alerts}
    stack.wait_for(lambda: set(receivers.hook_keys_seen("acme")) == want, timeout=60)
    payload = next(p for p in receivers.hooks["acme"] if p["type"] == "quota.violation")
    assert payload["event"]["data"]["usage"] == 5 and payload["event"]["data"]["limit"] == 4
    assert payload["event"]["id"] == out[0]["id"]


def test_email_over_starttls_with_a_login(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]], tmp_path: Path
) -> None:
    cert, key = tls_certificate(tmp_path)
    base = {
        "type": "email",
        "host": "127.0.0.1",
        "starttls": True,
        "ca_file": str(cert),
        "username": "novaquota",
        "from": "quota@example.com",
        "to": ["oncall@example.com"],
    }
    with SecureSmtp(cert, key, user="novaquota", password=SMTP_PASSWORD) as smtp:
        config = {
            "retry": _fast_retry(),
            "channels": {
                "mail": {**base, "port": smtp.port, "password": {"env": "SMTP_PASSWORD"}},
                "mail-wrong": {**base, "port": smtp.port, "password": {"env": "SMTP_WRONG"}},
            },
            "routes": [
                {"tenant_ids": ["good"], "channels": ["mail"]},
                {"tenant_ids": ["bad"], "channels": ["mail-wrong"]},
            ],
        }
        env = {**_secrets_env(), "SMTP_WRONG": "not-the-password-42"}
        stack, proc = deliver(config, env)
        _produce(
            stack, "quota-alerts", [alert_record("good", "a-good"), alert_record("bad", "a-bad")]
        )
        proc.start()
        dead = stack.wait_for(
            lambda: stack.consume("delivery-dead-letter", expect=1, timeout=5), timeout=60
        )
        stack.wait_for(lambda: smtp.mails, timeout=60)
        assert [str(m["X-Novaquota-Idempotency-Key"]) for m in smtp.mails] == ["quota.alert:a-good"]
        # one good login; smtplib tries each mechanism the server offers with the wrong one
        assert [ok for _, ok in smtp.logins].count(True) == 1
        assert ("novaquota", True) in smtp.logins
        headers = dict(dead[0].headers)
        assert headers["delivery.channel"] == b"mail-wrong"
        assert headers["delivery.attempts"] == b"1"  # a refused login is not retried
        assert headers["delivery.error"] == b"email: SMTP 535 (SMTPAuthenticationError)"
        written = [proc.get("/metrics")[1]]
        proc.stop()
    written += [proc.log_path.read_text(errors="replace"), repr(dead[0].headers)]
    for secret in (SMTP_PASSWORD, "not-the-password-42"):
        assert all(secret not in text for text in written), secret


def test_a_second_worker_joins_mid_stream_and_the_group_delivers_everything(
    deliver: Callable[..., tuple[Stack, DeliveryProcess]],
    receivers: Receivers,
    stack_factory: Callable[..., Stack],
) -> None:
    """A rebalance moves partitions (with their commits and channel marks) between workers;
    a small in-flight bound pauses and resumes fetching all along."""
    n = 160
    config = {
        "retry": _fast_retry(),
        "channels": {
            "all": {
                "type": "webhook",
                "url": f"{receivers.url}/hook/all",
                "secret": {"env": "HOOK_ACME_KEY"},
                "rate_limit": {"per_second": 20, "burst": 5},
            }
        },
        "routes": [{"channels": ["all"]}],
    }
    env = {**_secrets_env(), "NOVAQUOTA_DELIVERY_MAX_IN_FLIGHT": "8"}
    stack, first = deliver(config, env, stack=stack_factory(4))
    _produce(stack, "quota-alerts", [alert_record(f"r-{i % 8}", f"a-{i}") for i in range(n)])
    expected = {f"quota.alert:a-{i}" for i in range(n)}
    first.start()
    stack.wait_for(lambda: len(receivers.hook_keys_seen("all")) >= 20, timeout=60)
    _, second = deliver(config, env, stack=stack)
    second.start(wait_ready=False)
    stack.wait_for(
        lambda: (
            first.health().get("assigned_partitions", 0) > 0
            and second.health().get("assigned_partitions", 0) > 0
        ),
        timeout=90,
    )
    stack.wait_for(lambda: set(receivers.hook_keys_seen("all")) >= expected, timeout=120)
    hook = receivers.hook_keys_seen("all")
    assert set(hook) == expected
    by_worker = {
        "first": first.metric("delivery_sent_total", channel="all", outcome="delivered"),
        "second": second.metric("delivery_sent_total", channel="all", outcome="delivered"),
    }
    print(f"\ntwo workers, {n} alerts: delivered {by_worker}, duplicates {len(hook) - n}")
    assert by_worker["first"] > 0 and by_worker["second"] > 0
