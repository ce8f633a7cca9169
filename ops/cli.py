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

from novaquota.ops.topics import TopicMismatchError
from novaquota.streams.settings import Settings

__all__ = ["main"]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _cmd_kafka(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import kafka_local

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
    from novaquota.ops import topics

    if args.action == "create":
        report = asyncio.run(topics.create_topics(settings))
        for name, outcome in report.items():
            print(f"{outcome:>8}  {name}")
    else:
        described = asyncio.run(topics.describe_topics(settings))
        _print_json(described)
    return 0


def _cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import publish

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
    from novaquota.schemas.export import export_json_schemas

    written = export_json_schemas(Path(args.dir))
    print(f"wrote {len(written)} JSON Schema files to {args.dir}")
    return 0


def _cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.streams import tokens

    path = settings.tokens_file
    if args.action == "create":
        try:
            secret = tokens.create_token(path, args.name, args.role, args.tenant)
        except tokens.TokenError as exc:
            print(f"novaquota: {exc}", file=sys.stderr)
            return 1
        print(secret)
        print(
            f"token {args.name!r} ({args.role}) added to {path}; this is the only time its "
            "secret is shown. Send it as `Authorization: Bearer <token>`.",
            file=sys.stderr,
        )
    elif args.action == "list":
        _print_json(tokens.list_tokens(path))
    elif not tokens.revoke_token(path, args.name):
        print(f"novaquota: no token named {args.name!r} in {path}", file=sys.stderr)
        return 1
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.streams.runner import run_worker

    return run_worker(settings, extra_argv=args.faust_args)


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import bench

    return bench.main(args.rest, settings)


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import simulate

    return simulate.main(args.rest, settings)


def _cmd_projections(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.projections import cli

    return cli.main(args.rest, settings)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.projections import replay

    return replay.main(args.rest, settings)


def _cmd_deliver(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.streams.delivery import cli

    return cli.main(args.rest, settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import demo

    return demo.main(args.rest, settings)


# These parse their own options (``novaquota bench --help``).
DELEGATED = {
    "demo": ("the main job: broker, topics, workers and a live workload", _cmd_demo),
    "bench": ("benchmarks against the real broker (JSON report)", _cmd_bench),
    "simulate": ("the seeded workload simulator (to Kafka or a JSON-lines file)", _cmd_simulate),
    "projections": ("projection workers: analytics, forecasts, cost, reports", _cmd_projections),
    "replay": ("rebuild state as of a time from the log: an audit report", _cmd_replay),
    "deliver": ("deliver alerts and violations to webhooks, Slack, PagerDuty, email", _cmd_deliver),
}


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

    p = sub.add_parser("tokens", help="static API tokens (NOVAQUOTA_TOKENS_FILE)")
    tsub = p.add_subparsers(dest="action", required=True)
    t = tsub.add_parser("create", help="add a token and print it (only this once)")
    t.add_argument("--name", required=True)
    t.add_argument("--role", required=True, choices=["admin", "tenant-admin", "viewer", "service"])
    t.add_argument("--tenant", help="the tenant it acts for (every role but admin)")
    tsub.add_parser("list", help="names, roles, tenants and ids (never secrets)")
    t = tsub.add_parser("revoke", help="remove a token; workers stop accepting it within 1 s")
    t.add_argument("name")
    p.set_defaults(func=_cmd_tokens)

    p = sub.add_parser("worker", help="run the enforcement stream processor (a Faust worker)")
    p.add_argument(
        "faust_args", nargs=argparse.REMAINDER, help="extra Faust worker options, after --"
    )
    p.set_defaults(func=_cmd_worker)

    for name, (help_, func) in DELEGATED.items():
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        args = argparse.Namespace(rest=argv[1:], func=DELEGATED[argv[0]][1])
    else:
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
