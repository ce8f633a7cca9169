"""The ``novaquota`` command line (contract section 7).

Each sub-command imports what it needs lazily, so ``novaquota kafka status`` does not pay for
Faust, pandas or statsmodels. Every command ends with an exit code of ``ops.exitcodes``; the
ones that report take ``--output text|json`` (``ops.console``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from novaquota.ops.console import (
    add_output_option,
    add_progress_options,
    package_version,
    print_fields,
    print_json,
    print_table,
    progress_wanted,
)
from novaquota.ops.exitcodes import ExitCode, code_for
from novaquota.streams.settings import Settings

__all__ = ["DELEGATED", "build_parser", "delegated_parsers", "main"]


def _cmd_kafka(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import kafka_local

    if args.action == "start":
        st = kafka_local.start(settings, timeout=args.timeout)
    elif args.action == "stop":
        stopped = kafka_local.stop(settings)
        if args.output == "json":
            print_json({"stopped": stopped})
        else:
            print("broker stopped" if stopped else "no broker of ours was running")
        return ExitCode.OK
    else:
        st = kafka_local.status(settings)
    if args.output == "json":
        print_json(st)
    else:
        print_fields(st)
    return ExitCode.OK if st.get("reachable") else ExitCode.KAFKA_UNREACHABLE


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import topics

    if args.action == "create":
        report = asyncio.run(topics.create_topics(settings))
        if args.output == "json":
            print_json(report)
        else:
            for name, outcome in report.items():
                print(f"{outcome:>8}  {name}")
    else:
        described = asyncio.run(topics.describe_topics(settings))
        if args.output == "json":
            print_json(described)
        else:
            cols = ["topic", "exists", "partitions", "retention.ms", "cleanup.policy"]
            print_table(described, cols)
    return ExitCode.OK


def _cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import publish

    if args.file != "-":
        try:
            with open(args.file, "rb"):
                pass
        except OSError as exc:
            print(f"novaquota publish: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return ExitCode.USAGE
    result = asyncio.run(publish.publish_file(args.file, settings, progress=progress_wanted(args)))
    for err in result.errors:
        print(f"line {err.line}: {err.reason}: {err.message}", file=sys.stderr)
    if args.output == "json":
        print_json(
            {
                "published": result.sent,
                "resource_events": result.resource_events,
                "commands": result.commands,
                "rejected": len(result.errors),
                "errors": [
                    {"line": e.line, "reason": e.reason, "message": e.message}
                    for e in result.errors
                ],
            }
        )
    else:
        print(
            f"published {result.sent} message(s) "
            f"({result.resource_events} resource events, {result.commands} commands); "
            f"rejected {len(result.errors)}"
        )
    return ExitCode.REJECTED if result.errors else ExitCode.OK


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.schemas.export import export_json_schemas

    try:
        written = export_json_schemas(Path(args.dir))
    except OSError as exc:
        print(f"novaquota schemas: cannot write to {args.dir}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.output == "json":
        print_json({"dir": args.dir, "files": sorted(str(p) for p in written)})
    else:
        print(f"wrote {len(written)} JSON Schema files to {args.dir}")
    return ExitCode.OK


def _cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.streams import tokens

    path = settings.tokens_file
    json_out = args.output == "json"
    if args.action == "create":
        try:
            secret = tokens.create_token(path, args.name, args.role, args.tenant)
        except tokens.TokenError as exc:
            print(f"novaquota: {exc}", file=sys.stderr)
            return ExitCode.REJECTED
        if json_out:
            print_json(
                {"name": args.name, "role": args.role, "tenant": args.tenant, "token": secret}
            )
        else:
            print(secret)
        print(
            f"token {args.name!r} ({args.role}) added to {path}; this is the only time its "
            "secret is shown. Send it as `Authorization: Bearer <token>`.",
            file=sys.stderr,
        )
    elif args.action == "list":
        listed = tokens.list_tokens(path)
        if json_out:
            print_json(listed)
        else:
            print_table(listed, ["name", "role", "tenant", "id", "created_at"])
    elif not tokens.revoke_token(path, args.name):
        print(f"novaquota: no token named {args.name!r} in {path}", file=sys.stderr)
        return ExitCode.REJECTED
    elif json_out:
        print_json({"revoked": args.name})
    else:
        print(f"token {args.name!r} revoked")
    return ExitCode.OK


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops.topics import check_reachable
    from novaquota.streams.runner import run_worker

    asyncio.run(check_reachable(settings))  # Faust would retry for ever: exit 3 instead
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


def _cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.projections.policy import cli

    return cli.main(args.rest, settings)


def _cmd_deliver(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.streams.delivery import cli

    return cli.main(args.rest, settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from novaquota.ops import demo

    return demo.main(args.rest, settings)


Command = Callable[[argparse.Namespace, Settings], int]

# These parse their own options (``novaquota bench --help``).
DELEGATED: dict[str, tuple[str, Command]] = {
    "demo": ("the main job: broker, topics, workers and a live workload", _cmd_demo),
    "bench": ("benchmarks against the real broker (a headline table or a JSON report)", _cmd_bench),
    "simulate": ("the seeded workload simulator (to Kafka or a JSON-lines file)", _cmd_simulate),
    "projections": ("projection workers: analytics, forecasts, cost, reports", _cmd_projections),
    "replay": ("rebuild state as of a time from the log: an audit report", _cmd_replay),
    "policy": (
        "policies that act: validate, load, delete, list, run the policy worker",
        _cmd_policy,
    ),
    "deliver": ("deliver alerts and violations to webhooks, Slack, PagerDuty, email", _cmd_deliver),
}


def delegated_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parsers of the delegated commands, by command name (for ``--help`` and tests)."""
    from novaquota.ops import bench, demo, simulate
    from novaquota.projections import cli, replay
    from novaquota.projections.policy import cli as policy_cli
    from novaquota.streams.delivery import cli as delivery_cli

    return {
        "demo": demo.build_parser(),
        "bench": bench.build_parser(),
        "simulate": simulate.build_parser(),
        "projections": cli.build_parser(),
        "replay": replay.build_parser(),
        "policy": policy_cli.build_parser(),
        "deliver": delivery_cli.build_parser(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novaquota",
        description="NovaCron Quota Stream: exact, event-sourced quotas on Kafka.",
        epilog="Exit codes: 0 ok, 1 some input rejected, 2 usage, 3 cannot reach Kafka, 4 timeout.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"novaquota {package_version()}",
        help="print `novaquota <version>` and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("kafka", help="the local single-node Kafka broker (Maven Central jars)")
    p.add_argument(
        "action",
        choices=["start", "stop", "status"],
        help="start (idempotent), stop (only a broker started here) or status",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="start: seconds to wait for the broker to answer (exit 4 past it; default 180)",
    )
    add_output_option(p, "the broker's status")
    p.set_defaults(func=_cmd_kafka)

    p = sub.add_parser("topics", help="create or describe the contract's topics")
    p.add_argument(
        "action",
        choices=["create", "describe"],
        help="create what is missing (idempotent), or describe partitions and retention",
    )
    add_output_option(p, "the topics")
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("publish", help="validate and publish JSON-lines events or commands")
    p.add_argument("file", help="a JSON-lines file, or - for standard input")
    add_progress_options(p)
    add_output_option(p, "the summary (published, rejected with line reasons)")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("schemas", help="export the JSON Schemas of every message type")
    p.add_argument("action", choices=["export"], help="export: write one file per message type")
    p.add_argument("dir", help="the directory to write to (created if missing)")
    add_output_option(p, "the files written")
    p.set_defaults(func=_cmd_schemas)

    p = sub.add_parser("tokens", help="static API tokens (NOVAQUOTA_TOKENS_FILE)")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser("create", help="add a token and print it (only this once)")
    t.add_argument("--name", required=True, help="a unique name; the audit actor is token:NAME")
    t.add_argument(
        "--role",
        required=True,
        choices=["admin", "tenant-admin", "viewer", "service"],
        help="what the token may do (contract section 6)",
    )
    t.add_argument("--tenant", help="the tenant it acts for (every role but admin)")
    add_output_option(t, "the token (text: the secret alone)")
    t = tsub.add_parser("list", help="names, roles, tenants and ids (never secrets)")
    add_output_option(t, "the tokens")
    t = tsub.add_parser("revoke", help="remove a token; workers stop accepting it within 1 s")
    t.add_argument("name", help="the token's name")
    add_output_option(t, "the outcome")
    p.set_defaults(func=_cmd_tokens)

    p = sub.add_parser("worker", help="run the enforcement stream processor (a Faust worker)")
    p.add_argument(
        "faust_args", nargs=argparse.REMAINDER, help="extra Faust worker options, after --"
    )
    p.set_defaults(func=_cmd_worker)

    for name, (help_, func) in DELEGATED.items():
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument(
            "rest", nargs=argparse.REMAINDER, help=f"its options: `novaquota {name} --help`"
        )
        p.set_defaults(func=func)
    return parser


def _fail(code: ExitCode, exc: BaseException, settings: Settings) -> int:
    if code == ExitCode.KAFKA_UNREACHABLE:
        print(
            f"novaquota: cannot reach Kafka at {settings.bootstrap_servers} ({exc}); start the "
            "local broker with `novaquota kafka start`, or set KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
    else:
        print(f"novaquota: {exc}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        args = argparse.Namespace(rest=argv[1:], func=DELEGATED[argv[0]][1])
    else:
        args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: a bad NOVAQUOTA_* variable
        print(f"novaquota: bad settings in the environment: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        rc: int = args.func(args, settings)
    except Exception as exc:
        code = code_for(exc)
        if code is None:
            raise
        return _fail(code, exc, settings)
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
