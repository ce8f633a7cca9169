"""Integration fixtures: a fresh topic set per test, and real worker processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from novaquota.ops.topics import create_topics
from novaquota.streams.settings import Settings
from tests.support.kafka import consume_all, produce_raw
from tests.support.worker import WorkerProcess


@dataclass
class Stack:
    """One isolated deployment: its own topics, consumer group and worker processes."""

    bootstrap: str
    prefix: str
    partitions: int
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=self.prefix,
            partitions=self.partitions,
            app_id=f"{self.prefix}enforcement",  # as WorkerProcess names its group
        )

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def start_worker(self, *, wait_ready: bool = True, **env: str) -> WorkerProcess:
        w = WorkerProcess(
            bootstrap=self.bootstrap,
            topic_prefix=self.prefix,
            data_dir=self.tmp,
            partitions=self.partitions,
            env=env or None,
        )
        self.workers.append(w)
        return w.start(wait_ready=wait_ready)

    def owned(self, worker: int) -> list[int]:
        """The input partitions ``worker`` owns, once no rebalance is going on (else [])."""
        status, body = self.workers[worker].get("/internal/usage")
        return body["partitions"] if status == 200 and not body["rebalancing"] else []

    def wait_split(self, timeout: float = 90.0) -> None:
        """Until the first two workers share every partition between them."""
        self.wait_for(
            lambda: (
                bool(self.owned(0) and self.owned(1))
                and len(self.owned(0)) + len(self.owned(1)) == self.partitions
            ),
            timeout=timeout,
        )

    def produce(
        self,
        name: str,
        events: Sequence[dict[str, Any] | bytes],
        *,
        key: Callable[[dict[str, Any]], bytes | None] | None = None,
    ) -> None:
        """Produce events (dicts become structured JSON, keyed by data.tenant_id by default)."""
        records = []
        for ev in events:
            if isinstance(ev, bytes):
                records.append((None, ev, None))
                continue
            k = key(ev) if key else str(ev["data"].get("tenant_id", "system")).encode()
            records.append((k, json.dumps(ev).encode(), None))
        asyncio.run(produce_raw(self.bootstrap, self.topic(name), records))

    def consume(self, name: str, **kw: Any) -> list[Any]:
        return asyncio.run(consume_all(self.bootstrap, self.topic(name), **kw))

    def outputs(self, name: str, **kw: Any) -> list[dict[str, Any]]:
        """Output CloudEvents of a topic as dicts (structured mode)."""
        return [json.loads(r.value) for r in self.consume(name, **kw)]

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")

    def get(self, path: str, worker: int = 0) -> tuple[int, Any]:
        return self.workers[worker].get(path)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


@pytest.fixture
def stack_factory(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(partitions: int = 4) -> Stack:
        s = Stack(kafka_bootstrap, topic_prefix, partitions, tmp_path)
        asyncio.run(create_topics(s.settings))
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    """Topics with 4 partitions and one running worker."""
    s = stack_factory(4)
    s.start_worker()
    return s
