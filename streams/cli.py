"""`pit`: the command line of the Pit. Errors reach the user as one line and exit 1."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar, overload

from streams.components import COMPONENTS
from streams.config import Settings
from streams.errors import PitError
from streams.times import parse_time_ms, readable

_N = TypeVar("_N")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import serve
    from streams.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before librdkafka, SQLite and asyncio start their threads
    asyncio.run(serve(settings, join=args.join))
    return 0


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    from streams.memory import limit_malloc_arenas
    from streams.projector import serve

    limit_malloc_arenas()
    asyncio.run(serve(settings, parent=args.parent, metrics_port=args.metrics_port))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_demo

    asyncio.run(run_demo(settings))
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from streams.client import PitClient
    from streams.components import command_type
    from streams.decider import from_record, unknown_fields

    cls = command_type(args.type)
    try:
        fields = json.loads(args.json)
    except json.JSONDecodeError as exc:
        raise PitError(f"bad JSON for {cls.__name__}: {exc}") from None
    if not isinstance(fields, dict):
        raise PitError(f"{cls.__name__} needs a JSON object, got {type(fields).__name__}")
    unknown_fields(cls, fields, framing=())  # the client adds the meta

    async def publish() -> int:
        client = PitClient(settings, issued_by="pit-cli")
        example = {"meta": {"command_id": "x", "issued_at": 0, "issued_by": "pit-cli",
                            "correlation_id": None}, **fields}
        client.codec.validate(cls.avro_name, example)
        try:
            command = from_record(cls, fields)
        except (TypeError, ValueError) as exc:
            raise PitError(f"{cls.__name__}: {exc}") from None
        async with client:
            if args.no_wait:
                print(await client.publish(command, command_id=args.command_id))
                return 0
            outcome = await client.send(command, command_id=args.command_id,
                                        timeout=args.timeout)
        print(json.dumps(outcome.__dict__) if args.json_output else outcome.line())
        return 0 if outcome.accepted else 2

    return asyncio.run(publish())


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    from streams.client import PitClient

    async def follow() -> None:
        async with PitClient(settings) as client:
            async for outcome in client.results(from_beginning=args.from_beginning):
                print(outcome.line(), flush=True)
                if not args.follow:
                    break

    asyncio.run(follow())
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.topics import apply_to_cluster, load_catalog

    catalog = load_catalog()
    if args.action == "restore":
        return _restore_cluster(settings, catalog)
    if args.action == "list":
        for spec in catalog.values():
            print(f"{spec.name}\tpartitions={spec.partitions}\tkey={spec.key}\t"
                  f"cleanup={spec.cleanup_policy}\tretention_ms={spec.retention_ms}")
        return 0
    created = asyncio.run(apply_to_cluster(settings.kafka_client_options(), catalog))
    print(f"created: {', '.join(created)}" if created else "all topics exist")
    return 0


def _restore_cluster(settings: Settings, catalog: dict) -> int:
    """`pit topics restore`: disaster recovery onto a new, empty cluster - every archived
    record back at its original offset (the same restore `pit up` does for the embedded
    broker), so consumer positions, the views and the archive still line up."""
    from streams.app import progress_printer, restore_broker
    from streams.archive import pending_engine
    from streams.history import end_offsets
    from streams.sql import connect_existing

    if settings.embedded:
        raise PitError("pit topics restore fills a new cluster (set PIT_KAFKA_BOOTSTRAP_SERVERS);"
                       " the embedded broker is restored by `pit up` itself")
    engine = connect_existing(settings.db_url)
    ends = end_offsets(settings, [(spec.name, p) for spec in catalog.values()
                                  for p in range(spec.partitions)])
    held = {topic: n for (topic, _), n in ends.items() if n}
    if held:
        topic = min(held)
        raise PitError(f"{topic} already holds records (offset {held[topic]:,}): restore only"
                       " into a cluster whose topics are new and empty (`pit topics apply`)")
    restored = asyncio.run(restore_broker(engine, pending_engine(engine), settings, catalog,
                                          progress_printer("restoring the cluster")))
    print(f"restored {restored:,} records from the archive into"
          f" {settings.bootstrap_servers}")
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.check import check_repository, record_versions

    report = check_repository()
    for line in report.lines():
        print(line)
    if report.ok and args.record:
        for line in record_versions():
            print(line)
    return 0 if report.ok else 1


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import inspect

    from projections import audit
    from streams.archive import audit_log
    from streams.component import audit_deciders
    from streams.components import COMPONENTS
    from streams.sql import connect_existing

    until_ms = parse_time_ms(args.until, "--until") if args.until else None  # bad input before I/O
    engine = connect_existing(settings.db_url)
    if not inspect(engine).has_table(audit_log.name):
        raise PitError(f"nothing archived yet in {settings.db_url} (no `pit up` has run there)")
    if args.target == "verify":
        report = audit.verify(engine)
        for line in report.lines():
            print(line)
        return 0 if report.ok else 1
    if until_ms is not None:
        state = audit.state_as_of(engine, args.target, until_ms, audit_deciders(COMPONENTS))
        if state is None:
            raise PitError(f"no events for {args.target!r} before {args.until}")
        shown = readable(state)
        if hasattr(state, "time_in_state_ms"):
            shown["time_in_state_ms"] = state.time_in_state_ms(until_ms)
        print(json.dumps(readable({"as_of_ms": until_ms, **shown}), default=str, indent=2))
        return 0
    rows = audit.history(engine, args.target)
    if not rows:
        raise PitError(f"no audit history for {args.target!r}")
    quiet = () if args.all else {name for c in COMPONENTS for name in c.quiet_events}
    for line in audit.history_lines(rows, quiet):
        print(line)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from projections.replay import rebuild_view
    from streams.app import progress_printer
    from streams.components import views
    from streams.sql import connect_existing

    engine = connect_existing(settings.db_url)
    done = asyncio.run(rebuild_view(engine, settings, args.view, views(settings),
                                    progress_printer(f"replaying {args.view}")))
    print(f"{args.view}: rebuilt from {done:,} records and swapped in")
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import run_bench

    figures = asyncio.run(run_bench(args.component, settings))
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:40s} {value}")
    return 0


class CampaignParser(argparse.ArgumentParser):
    """One campaign's parser. Its module (which imports whole Pits: the app, the client,
    SQLAlchemy) is imported for its arguments only once that campaign is chosen, so every
    other command starts without it."""

    def __init__(self, *, module: str, **options: Any) -> None:
        super().__init__(**options)
        self.module = module
        self.loaded = False

    @overload
    def parse_known_args(self, args: Iterable[str] | None = None, namespace: None = None
                         ) -> tuple[argparse.Namespace, list[str]]: ...
    @overload
    def parse_known_args(self, args: Iterable[str] | None, namespace: _N
                         ) -> tuple[_N, list[str]]: ...
    @overload
    def parse_known_args(self, *, namespace: _N) -> tuple[_N, list[str]]: ...

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: _N | None = None
                         ) -> tuple[_N | argparse.Namespace, list[str]]:
        if not self.loaded:
            from importlib import import_module

            runner = import_module(self.module)
            runner.add_arguments(self)
            self.set_defaults(run=runner.run)
            self.loaded = True
        return super().parse_known_args(args, namespace)


def add_campaigns(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`pit campaign <name>`: one subcommand per campaign (streams/campaigns/)."""
    from streams.campaigns import CAMPAIGNS

    campaign = sub.add_parser("campaign", help="run a chaos, fuzz, drain or soak campaign")
    names = campaign.add_subparsers(dest="campaign", required=True, parser_class=CampaignParser)
    for name, (module, summary) in CAMPAIGNS.items():
        names.add_parser(name, help=summary, module=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run broker, processors, projections and the API")
    up.add_argument("--join", action="store_true",
                    help="add this process to the pit up running on the same data directory "
                         "(embedded broker): the two share the work")
    up.set_defaults(run=cmd_up)
    project = sub.add_parser(
        "project", help="run a projector alone: views, audit log and their metrics (pit up"
                        " runs one as its child; against a cluster, run more to share the work)")
    project.add_argument("--metrics-port", type=int, default=0,
                         help="serve /metrics on this port of 127.0.0.1 (default: a free one)")
    project.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # pit up's pid
    project.set_defaults(run=cmd_project)
    sub.add_parser("demo", help="run a scripted scenario end to end").set_defaults(run=cmd_demo)
    for component in COMPONENTS:  # the kernel's commands are here, each component adds its own
        if component.add_cli is not None:
            component.add_cli(sub)

    publish = sub.add_parser("publish", help="publish a command and print its outcome")
    publish.add_argument("type", help="command type, e.g. TransitionModel")
    publish.add_argument("json", help='command fields as JSON, e.g. \'{"model_id": "m1", ...}\'')
    publish.add_argument("--command-id", help="idempotency key (default: a new UUID)")
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds to await outcome")
    publish.add_argument("--no-wait", action="store_true", help="print the command id and exit")
    publish.add_argument("--json-output", action="store_true", help="print the outcome as JSON")
    publish.set_defaults(run=cmd_publish)

    results = sub.add_parser("results", help="print outcomes from pit.results")
    results.add_argument("--follow", "-f", action="store_true", help="keep printing")
    results.add_argument("--from-beginning", action="store_true")
    results.set_defaults(run=cmd_results)

    topics = sub.add_parser("topics", help="the topic catalog (infra/topics.yaml)")
    topics.add_argument("action", choices=["apply", "list", "restore"],
                        help="apply: create the catalog's topics on a cluster; restore: fill a"
                             " new cluster's empty topics from the archive")
    topics.set_defaults(run=cmd_topics)

    schemas = sub.add_parser("schemas", help="schema compatibility")
    schemas.add_argument("action", choices=["check"])
    schemas.add_argument("--record", action="store_true",
                         help="record compatible changes as new versions")
    schemas.set_defaults(run=cmd_schemas)

    audit = sub.add_parser("audit", help="`verify` the hash chain, or show a key's history")
    audit.add_argument("target", help="`verify`, or an entity key such as a model id")
    audit.add_argument("--until", help="show the entity's state as of this time")
    audit.add_argument("--all", action="store_true",
                       help="every record, health checks too (else a run of them is one line)")
    audit.set_defaults(run=cmd_audit)

    replay = sub.add_parser("replay", help="rebuild a view from the log and swap it in")
    replay.add_argument("view", help="view name, e.g. models")
    replay.set_defaults(run=cmd_replay)

    bench = sub.add_parser("bench", help="measure and report figures")
    bench.add_argument("component", nargs="?", default="all")
    bench.add_argument("--json", action="store_true", help="one JSON object")
    bench.set_defaults(run=cmd_bench)
    add_campaigns(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a lone surrogate in a name prints as \udc80
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = Settings.from_env()
        for component in COMPONENTS:  # a bad component setting fails before any command
            if component.settings is not None:
                component.settings(settings)
        return args.run(args, settings)
    except PitError as exc:
        print(f"pit: error: {exc}", file=sys.stderr)
        return 1
    except UnicodeError as exc:  # text that cannot be UTF-8 on the wire (a lone surrogate)
        print(f"pit: error: not valid UTF-8 text: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pit audit m | head`: the reader left, which is fine
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the pipe
        return 0


if __name__ == "__main__":
    sys.exit(main())
