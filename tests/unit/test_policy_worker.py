"""The policy worker's glue without a broker: what an action is sent as, the emitted ledger (an
id sent once is never sent again, across a restart), and no sending while the log is re-read."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from novaquota.projections.policy.engine import Observation, PolicyAction, PolicyEngine
from novaquota.projections.policy.worker import PolicySettings, PolicyWorker
from novaquota.schemas.codec import decode, decode_output
from novaquota.schemas.policies import Policy
from novaquota.streams.settings import Settings

US = 1_000_000
T0 = 1_793_491_200 * US
KEY = ("acme", "tenant", "acme", "cpu")


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _worker(tmp: Path) -> tuple[PolicyWorker, FakeProducer]:
    w = PolicyWorker(Settings(topic_prefix="t."), PolicySettings(data_dir=tmp))
    producer = FakeProducer()
    w._producer = producer  # type: ignore[assignment]
    return w, producer


def _actions() -> list[PolicyAction]:
    p = Policy.model_validate(
        {
            "name": "p",
            "rules": [
                {
                    "name": "r",
                    "when": {"utilization": {"above": 90}},
                    "then": [{"adjust_limit": {"factor": 2}}, {"alert": {"severity": "info"}}],
                }
            ],
        }
    )
    quota = {"resource_type": "cpu", "limit": Decimal(10), "status": "active"}
    return PolicyEngine([p]).observe(Observation(KEY, T0, Decimal(10), Decimal(10), quota=quota))


def test_actions_become_a_command_and_an_alert(tmp_path: Path) -> None:
    w, producer = _worker(tmp_path)
    acts = _actions()
    assert asyncio.run(w.send(acts)) == 2
    (ct, ck, cv), (at, ak, av) = producer.sent
    assert (ct, ck, at, ak) == ("t.quota-commands", b"acme", "t.quota-alerts", b"acme")
    command = decode(cv)
    assert command.type == "quota.set" and command.id == acts[0].action_id
    assert command.source == "novaquota/policy" and command.data.actor == "policy/p@1"
    envelope, alert = decode_output(av)
    assert envelope.id == acts[1].action_id and alert.kind == "policy"  # type: ignore[union-attr]
    reg = w.metrics.registry
    assert reg.get_sample_value("policy_emitted_total", {"kind": "command"}) == 1
    assert reg.get_sample_value("policy_emitted_total", {"kind": "alert"}) == 1
    assert (
        reg.get_sample_value("policy_actions_total", {"policy": "p", "kind": "adjust_limit"}) == 1
    )


def test_an_id_in_the_ledger_is_never_sent_again_also_after_a_restart(tmp_path: Path) -> None:
    w, producer = _worker(tmp_path)
    w.positions = {("t.resource-events", 0): 5}
    asyncio.run(w.send(_actions()))
    w.positions = {("t.resource-events", 0): 6}  # more input, the same actions computed again
    assert asyncio.run(w.send(_actions())) == 0 and len(producer.sent) == 2
    again, producer2 = _worker(tmp_path)  # a restart reads the ledger
    assert again.emitted_positions == {("t.resource-events", 0): 5}
    again.positions = {("t.resource-events", 0): 7}
    assert asyncio.run(again.send(_actions())) == 0 and producer2.sent == []
    assert again.status.suppressed == 2


def test_nothing_is_sent_while_the_log_is_read_again(tmp_path: Path) -> None:
    w, producer = _worker(tmp_path)
    w.emitted_positions = {("t.resource-events", 0): 10, ("t.quota-commands", 0): 3}
    w.positions = {("t.resource-events", 0): 10, ("t.quota-commands", 0): 2}
    assert w.replaying()
    assert asyncio.run(w.send(_actions())) == 0 and producer.sent == []
    w.positions = {("t.resource-events", 0): 11, ("t.quota-commands", 0): 2}
    assert not w.replaying()
    assert asyncio.run(w.send(_actions())) == 2


def test_state_and_position_survive_a_restart_and_a_rebuild_keeps_the_ledger(
    tmp_path: Path,
) -> None:
    w, _producer = _worker(tmp_path)
    w.feed.engine.set_policy(Policy.model_validate({"name": "p", "rules": [
        {"name": "r", "when": {"tier": {"in": ["x"]}}, "then": "suspend"}]}))  # fmt: skip
    w.positions = {("t.resource-events", 0): 4}
    w._dirty = True
    w.commit()
    asyncio.run(w.send(_actions()))
    again, _ = _worker(tmp_path)
    assert again.positions == {("t.resource-events", 0): 4}
    assert "p" in again.feed.engine.policies
    PolicyWorker.drop_state(tmp_path)
    rebuilt, _ = _worker(tmp_path)
    assert rebuilt.positions == {} and not rebuilt.feed.engine.policies
    assert len(rebuilt.emitted_ids) == 2
    raw: dict[str, Any] = orjson.loads((tmp_path / "emitted.json").read_bytes())
    assert sorted(raw["ids"]) == sorted(a.action_id for a in _actions())
