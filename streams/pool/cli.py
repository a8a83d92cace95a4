"""`pit host` and `pit pool status`: the pool's command line (the model host,
streams/pool/host.py, and the pool view, projections/pool.py). Errors are `PitError`s:
streams/cli.py prints them as one line."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rest is imported when a command runs: `pit` starts fast
    from streams.config import Settings


def cmd_host(args: argparse.Namespace, settings: Settings) -> int:
    from streams.pool.host import run_host
    from streams.process import exit_now

    return exit_now(asyncio.run(run_host(settings, args.id, args.memory_mb, args.capacity,
                                         port=args.port, bind=args.bind,
                                         advertise=args.advertise or "", pool_id=args.pool,
                                         drain_timeout_s=args.drain_timeout)))


def cmd_pool(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import inspect

    from projections.pool import pool_status, status_lines
    from streams.sql import connect_existing

    engine = connect_existing(settings.db_url)
    status = pool_status(engine, args.pool) if inspect(engine).has_table("pools") else None
    if status is None:
        print(f"pool {args.pool}: no data yet (no host or model has registered; start"
              " `pit up`, then `pit host` or register models)")
    elif args.json:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(status_lines(status)))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`pit host` and `pit pool ...` on the `pit` parser's subcommands."""
    host = sub.add_parser("host", help="run a model host: load models the pool places here and"
                                       " answer inference")
    host.add_argument("--id", required=True, help="host id in the pool")
    host.add_argument("--memory-mb", type=int, required=True, help="memory budget (MB)")
    host.add_argument("--capacity", type=int, required=True, help="most models held at once")
    host.add_argument("--port", type=int, default=0, help="HTTP port (default: any free one)")
    host.add_argument("--bind", default="127.0.0.1",
                      help="address to listen on (0.0.0.0 in a container)")
    host.add_argument("--advertise", metavar="URL",
                      help="the URL runners and clients call it at (default:"
                           " http://<bind>:<port>; e.g. http://pit-host:8700 in compose)")
    host.add_argument("--pool", default="default", help="pool id")
    host.add_argument("--drain-timeout", type=float, default=30.0,
                      help="seconds SIGTERM waits for in-flight allocations before leaving")
    host.set_defaults(run=cmd_host)

    pool = sub.add_parser("pool", help="the model pool: `status` shows it at a glance")
    pool.add_argument("action", choices=["status"])
    pool.add_argument("--pool", default="default", help="pool id")
    pool.add_argument("--json", action="store_true", help="the status as JSON (as GET /pool)")
    pool.set_defaults(run=cmd_pool)
