"""``novaquota policy``: policies that act (docs/policies.md).

novaquota policy validate FILE...            check policy files, publish nothing
novaquota policy load FILE... [--actor A]    validate, then publish one policy.set per policy
novaquota policy delete NAME [--actor A]     publish policy.deleted
novaquota policy list [--url URL | --from-log]
novaquota policy run [--port 6068] [--data-dir DIR] [--no-emit]
novaquota policy rebuild [--keep-running] ... (read the log again; the emitted ledger stays)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from novaquota.schemas.policies import Policy, PolicyFileError, load_policies
from novaquota.streams.settings import Settings

__all__ = ["build_parser", "main"]

CLI_SOURCE = "novaquota/cli"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novaquota policy", description="Policies: rules that watch quotas and act."
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("validate", help="check policy files (YAML or JSON); publish nothing")
    p.add_argument("files", nargs="+", type=Path)
    p = sub.add_parser("load", help="validate, then publish policy.set for each policy")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--actor", default=None, help="who loads it (default $USER)")
    p = sub.add_parser("delete", help="publish policy.deleted")
    p.add_argument("name")
    p.add_argument("--actor", default=None, help="who deletes it (default $USER)")
    p = sub.add_parser("list", help="the policy set, from the policy worker or the log")
    p.add_argument("--url", help="policy worker base URL (default http://127.0.0.1:6068)")
    p.add_argument(
        "--from-log", action="store_true", help="read the command topic instead of a worker"
    )
    for name, help_ in (
        ("run", "evaluate the policies from the log and send their actions"),
        ("rebuild", "forget the state and read the log again (nothing is sent twice)"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", help="HTTP host (default NOVAQUOTA_POLICY_WEB_HOST)")
        p.add_argument("--port", type=int, help="HTTP port (default 6068)")
        p.add_argument("--data-dir", type=Path, help="state directory")
        p.add_argument("--no-emit", action="store_true", help="evaluate only: send nothing")
        if name == "rebuild":
            p.add_argument("--keep-running", action="store_true")
    return parser


def _load(files: list[Path]) -> list[Policy] | None:
    policies: list[Policy] = []
    failed = False
    for f in files:
        try:
            policies.extend(load_policies(f))
        except PolicyFileError as exc:
            failed = True
            for problem in exc.problems:
                print(f"{exc.source}: {problem}", file=sys.stderr)
    names = [p.name for p in policies]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        print(f"policy {dup!r} is defined more than once", file=sys.stderr)
        failed = True
    return None if failed else policies


def _actor(given: str | None) -> str:
    return given or os.environ.get("USER") or "cli"


async def _publish(settings: Settings, messages: list[tuple[str, dict[str, Any]]]) -> None:
    from novaquota.ops.publish import STRUCTURED, make_producer
    from novaquota.schemas.codec import encode

    producer = make_producer(settings)
    await producer.start()
    try:
        now_us = int(time.time() * 1_000_000)
        futures = []
        for type_, data in messages:
            value = encode(type_, data, source=CLI_SOURCE, id=str(uuid.uuid4()), time_us=now_us)
            futures.append(
                await producer.send(
                    settings.topics.quota_commands, value, key=b"system", headers=STRUCTURED
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _validate(args: argparse.Namespace) -> int:
    policies = _load(args.files)
    if policies is None:
        return 1
    for p in policies:
        print(f"{p.ref}: {len(p.rules)} rule(s) ({', '.join(r.name for r in p.rules)})")
    return 0


def _load_cmd(args: argparse.Namespace, settings: Settings) -> int:
    policies = _load(args.files)
    if policies is None:
        print("novaquota policy: nothing published", file=sys.stderr)
        return 1
    actor = _actor(args.actor)
    messages = [("policy.set", {**p.model_dump(mode="json"), "actor": actor}) for p in policies]
    asyncio.run(_publish(settings, messages))
    for p in policies:
        print(f"published policy.set {p.ref} ({len(p.rules)} rule(s))")
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    asyncio.run(
        _publish(settings, [("policy.deleted", {"name": args.name, "actor": _actor(args.actor)})])
    )
    print(f"published policy.deleted {args.name}")
    return 0


async def _from_log(settings: Settings) -> dict[str, Any]:
    """The policy set as the command topic has it (the newest policy.set / policy.deleted)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from novaquota.schemas.codec import decode
    from novaquota.schemas.commands import PolicyDeleted, PolicySet
    from novaquota.schemas.exceptions import DecodeError

    topic = settings.topics.quota_commands
    consumer = AIOKafkaConsumer(**settings.kafka_client_config(), enable_auto_commit=False)
    await consumer.start()
    found: dict[str, dict[str, Any]] = {}
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    try:
                        d = decode(r.value, r.headers)
                    except DecodeError:
                        continue
                    if isinstance(d.data, PolicySet):
                        p = d.data.policy()
                        found[p.name] = {
                            "name": p.name,
                            "active": True,
                            "version": p.version,
                            "description": p.description,
                            "rules": [rule.name for rule in p.rules],
                            "set_by": d.data.actor,
                        }
                    elif isinstance(d.data, PolicyDeleted) and d.data.name in found:
                        found[d.data.name] = {**found[d.data.name], "active": False}
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return {"policies": [found[n] for n in sorted(found)]}


def _list(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_log:
        body = asyncio.run(_from_log(settings))
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0
    import httpx

    from novaquota.projections.policy.worker import PolicySettings

    base = (args.url or f"http://127.0.0.1:{PolicySettings().web_port}").rstrip("/")
    token = os.environ.get("NOVAQUOTA_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(f"{base}/api/v1/policies", headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        print(
            f"novaquota policy: no policy worker answers at {base} ({exc}); try --from-log",
            file=sys.stderr,
        )
        return 1
    print(orjson.dumps(resp.json(), option=orjson.OPT_INDENT_2).decode())
    return 0 if resp.status_code == 200 else 1


async def serve(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from novaquota.projections.policy.http import build_app
    from novaquota.projections.policy.worker import PolicySettings, PolicyWorker
    from novaquota.streams.auth import build_access

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["web_host"] = args.host
    if args.port is not None:
        overrides["web_port"] = args.port
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.no_emit:
        overrides["emit"] = False
    psettings = PolicySettings(**overrides)
    rebuild = args.action == "rebuild"
    if rebuild:
        PolicyWorker.drop_state(psettings.data_dir)
    worker = PolicyWorker(settings, psettings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await worker.start()
    runner = web.AppRunner(build_app(worker, build_access(settings)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, psettings.web_host, psettings.web_port).start()
    logging.getLogger("novaquota.policy").info(
        "policy worker serving on http://%s:%d", psettings.web_host, psettings.web_port
    )
    try:
        if rebuild and not args.keep_running:
            await worker.run(stop, until_caught_up=True)
            print(orjson.dumps(worker.status_body(), option=orjson.OPT_INDENT_2).decode())
        else:
            await worker.run(stop)
    finally:
        await runner.cleanup()
        await worker.stop()
    return 0


def main(argv: list[str], settings: Settings) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "validate":
        return _validate(args)
    if args.action == "load":
        return _load_cmd(args, settings)
    if args.action == "delete":
        return _delete(args, settings)
    if args.action == "list":
        return _list(args, settings)
    from novaquota.streams.logs import configure_logging

    configure_logging(settings)
    try:
        return asyncio.run(serve(settings, args))
    except (RuntimeError, OSError) as exc:  # a missing topic, a port in use
        print(f"novaquota policy: {exc}", file=sys.stderr)
        return 1
