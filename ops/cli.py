"""The ``novaquota`` command line (contract section 7).

Each sub-command imports what it needs lazily, so ``novaquota kafka status`` does not pay for
Faust, pandas or statsmodels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from aiokafka.errors import KafkaConnectionError

from ops.topics import TopicMismatchError
from streams.settings import Settings

__all__ = ["main"]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _cmd_kafka(args: argparse.Namespace, settings: Settings) -> int:
    from ops import kafka_local

    if args.action == "start":
        _print_json(kafka_local.start(settings))
    elif args.action == "stop":
        stopped = kafka_local.stop(settings)
        print("broker stopped" if stopped else "no broker of ours was running")
    else:
        st = kafka_local.status(settings)
        _print_json(st)
        return 0 if st.get("reachable") else 3
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from ops import topics

    if args.action == "create":
        report = asyncio.run(topics.create_topics(settings))
        for name, outcome in report.items():
            print(f"{outcome:>8}  {name}")
    else:
        described = asyncio.run(topics.describe_topics(settings))
        _print_json(described)
    return 0


def _cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from ops import publish

    result = asyncio.run(publish.publish_file(args.file, settings, progress=not args.quiet))
    for err in result.errors:
        print(f"line {err.line}: {err.reason}: {err.message}", file=sys.stderr)
    print(
        f"published {result.sent} message(s) "
        f"({result.resource_events} resource events, {result.commands} commands); "
        f"rejected {len(result.errors)}",
        file=sys.stderr,
    )
    return 1 if result.errors else 0


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.export import export_json_schemas

    written = export_json_schemas(Path(args.dir))
    print(f"wrote {len(written)} JSON Schema files to {args.dir}")
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import run_worker

    return run_worker(settings, extra_argv=args.faust_args)


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from ops import bench

    return bench.main(args, settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ops.demo import run_demo

    return run_demo(settings, rate=args.rate, tenants=args.tenants, duration=args.duration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novaquota",
        description="NovaCron Quota Stream: exact, event-sourced quotas on Kafka.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("kafka", help="the local single-node Kafka broker (Maven Central jars)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=_cmd_kafka)

    p = sub.add_parser("topics", help="create or describe the contract's topics")
    p.add_argument("action", choices=["create", "describe"])
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("publish", help="validate and publish JSON-lines events or commands")
    p.add_argument("file", help="a JSON-lines file, or - for standard input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("schemas", help="export the JSON Schemas of every message type")
    p.add_argument("action", choices=["export"])
    p.add_argument("dir")
    p.set_defaults(func=_cmd_schemas)

    p = sub.add_parser("worker", help="run the enforcement stream processor (a Faust worker)")
    p.add_argument(
        "faust_args", nargs=argparse.REMAINDER, help="extra Faust worker options, after --"
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("demo", help="the main job: broker, topics, worker and a live workload")
    p.add_argument("--rate", type=float, default=200.0, help="resource events per second")
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="throughput against the real broker (JSON report)")
    p.add_argument("--events", type=int, default=100_000, help="resource events to process")
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        rc: int = args.func(args, settings)
    except KafkaConnectionError:
        print(
            f"novaquota: cannot reach Kafka at {settings.bootstrap_servers}; start the local "
            "broker with `novaquota kafka start`, or set KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return 2
    except TopicMismatchError as exc:
        print(f"novaquota: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
