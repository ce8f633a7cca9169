"""Shared fixtures. The broker: ``KAFKA_BOOTSTRAP_SERVERS`` when set, else testcontainers when a
Docker engine answers, else the project's own local broker (started here, stopped at the end).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.4.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from novaquota.ops import kafka_local
    from novaquota.streams.settings import Settings

    settings = Settings()
    was_running = kafka_local.is_reachable(settings.bootstrap_servers)
    kafka_local.start(settings)
    try:
        yield settings.bootstrap_servers
    finally:
        if not was_running:
            kafka_local.stop(settings)


@pytest.fixture
def topic_prefix() -> str:
    """Each test gets its own topic set and consumer group."""
    return f"t{uuid.uuid4().hex[:10]}."
