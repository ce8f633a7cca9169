"""The local broker of ops/kafka_local.py: start, produce/consume, stop, nothing left behind.

A throw-away broker runs on two free ports with its own kafka_home and data dir, reusing the
cached jars, whatever else runs on the machine; ``status`` is also checked against the broker
the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from novaquota.ops import kafka_local
from novaquota.streams.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_sees_the_suite_broker(kafka_bootstrap: str) -> None:
    st = kafka_local.status(Settings(bootstrap_servers=kafka_bootstrap))
    assert st["reachable"] is True
    assert st["bootstrap"] == kafka_bootstrap


async def _roundtrip(bootstrap: str) -> bytes:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"kafka-local-test-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=topic, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        await consumer.commit()
        return msg.value
    finally:
        await consumer.stop()


def _broker_processes(config: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line names this broker's config."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if str(config) in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_local_broker_lifecycle(tmp_path: Path) -> None:
    configured = Settings()
    port, controller_port = _free_port(), _free_port()
    # Reuse the cached jars (downloaded once into the default kafka_home if missing).
    lib = kafka_local.ensure_jars(configured)
    home = tmp_path / "kafka"
    (home / configured.kafka_version).mkdir(parents=True)
    (home / configured.kafka_version / "lib").symlink_to(lib, target_is_directory=True)
    settings = Settings(
        bootstrap_servers=f"localhost:{port}",
        kafka_home=home,
        kafka_data_dir=tmp_path / "data",
        kafka_controller_port=controller_port,
        kafka_version=configured.kafka_version,
    )
    assert kafka_local.ensure_jars(settings) == home / configured.kafka_version / "lib"
    assert kafka_local.status(settings)["running"] is False

    config = home / "server.properties"
    try:
        st = kafka_local.start(settings, timeout=120)
        assert st["running"] is True and st["reachable"] is True and st["external"] is False
        pid = st["pid"]
        assert isinstance(pid, int)
        assert st["version"] == configured.kafka_version
        assert (tmp_path / "data" / "meta.properties").exists()

        again = kafka_local.start(settings, timeout=30)  # idempotent: same broker
        assert again["pid"] == pid

        assert asyncio.run(_roundtrip(settings.bootstrap_servers)) == b"hello"
    finally:
        stopped = kafka_local.stop(settings, timeout=30)

    assert stopped is True
    assert _broker_processes(config) == []
    st = kafka_local.status(settings)
    assert st["running"] is False and st["pid"] is None and st["reachable"] is False
    assert not (home / "broker.pid").exists()
    assert kafka_local.stop(settings) is False  # nothing left to stop
