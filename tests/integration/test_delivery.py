"""The delivery worker against a real broker and local receivers, run as the real
``novaquota deliver`` process: routing to every channel, retries, dead letters, secrets kept out
of everything it writes, a kill -9 mid-batch, and violations made by a real enforcement worker."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Stack
from tests.support.delivery import (
    DeliveryProcess,
    Receivers,
    alert_record,
    resolved_record,
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
