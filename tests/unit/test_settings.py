"""Settings: defaults, environment, and the app id that follows a custom topic prefix."""

from __future__ import annotations

import pytest

from novaquota.streams.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOVAQUOTA_TOPIC_PREFIX", "NOVAQUOTA_APP_ID", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = Settings()
    assert (s.topic_prefix, s.app_id, s.partitions) == ("novacron.", "novaquota-enforcement", 12)
    assert s.topics.admission == "novacron.internal-admission"


def test_a_custom_prefix_gets_its_own_consumer_group_and_changelogs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(topic_prefix="staging.").app_id == "staging.enforcement"
    monkeypatch.setenv("NOVAQUOTA_TOPIC_PREFIX", "eu.")
    assert Settings().app_id == "eu.enforcement"
    monkeypatch.setenv("NOVAQUOTA_APP_ID", "quotas")  # an explicit app id wins
    assert Settings().app_id == "quotas"
    assert Settings(topic_prefix="x.", app_id="mine").app_id == "mine"


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        Settings(log_format="xml")
    with pytest.raises(ValueError):
        Settings(partitions=0)
