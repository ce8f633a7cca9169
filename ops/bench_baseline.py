"""A bare Faust agent for ``novaquota bench``: the same topic, the same app settings as the
worker, but no decoding, no state and no outputs — Faust's own ceiling on this machine.

Run as a process: ``python -m ops.bench_baseline`` (settings from the environment); it exposes
``quota_events_processed_total`` on ``/metrics`` like the worker, so the bench measures both the
same way.
"""

from __future__ import annotations

import sys

import faust
from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from novaquota.streams.metrics import Metrics
from novaquota.streams.runner import FAUST_LOG_LEVELS
from novaquota.streams.settings import Settings

__all__ = ["main"]


def main() -> int:
    settings = Settings()
    metrics = Metrics()
    app = faust.App(
        f"{settings.app_id}-baseline",
        broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
        web_port=settings.web_port,
        web_host=settings.web_host,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        datadir=str(settings.data_dir),
        autodiscover=False,
    )
    topic = app.topic(
        settings.topics.resource_events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    counter = metrics.events_processed.labels("any", "accepted")

    @app.agent(topic, concurrency=1)
    async def count(stream: faust.StreamT) -> None:
        async for _event in stream.events():
            counter.inc()

    @app.page("/metrics")
    async def metrics_view(self: web.View, request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    sys.argv = [
        "novaquota-bench-baseline",
        "worker",
        "--loglevel",
        FAUST_LOG_LEVELS.get(settings.log_level.upper(), "warn"),
        "--web-port",
        str(settings.web_port),
    ]
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
