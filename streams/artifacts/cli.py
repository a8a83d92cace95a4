"""`pit artifact put|get|info|search|log|diff|lineage|stats`: the command line of the
Artifact Store (streams/artifacts/client.py). Errors are `PitError`s: streams/cli.py prints
them as one line."""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import sys
from typing import TYPE_CHECKING, Any

from streams.errors import PitError
from streams.times import when

if TYPE_CHECKING:
    from streams.artifacts.client import ArtifactOps
    from streams.config import Settings


def parse_metadata(pairs: list[str] | None) -> dict[str, Any]:
    """--meta key=JSON-or-text, repeated."""
    found: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise PitError(f"--meta {pair!r}: expected key=value")
        try:
            found[key] = json.loads(text)
        except ValueError:
            found[key] = text
    return found




async def _put(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    content = sys.stdin.buffer.read() if args.file == "-" else args.file
    stored = await artifacts.store(
        content, name=args.name, content_type=args.type, tags=args.tag or [],
        metadata=parse_metadata(args.meta), message=args.message or "",
        derived_from=args.derived_from or [], creator=args.creator)
    new = "stored" if stored.newly_stored else "already stored (deduplicated)"
    print(f"{stored.address} {stored.size:,} bytes {new}"
          + (f" as {args.name}" if args.name else ""))


async def _get(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    if args.output:
        path = await artifacts.retrieve(args.ref, to=args.output)
        print(f"{args.ref} -> {path}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(await artifacts.retrieve(args.ref))
        sys.stdout.flush()


async def _info(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    from streams.artifacts.client import describe

    entry = await artifacts.info(args.ref)
    print(json.dumps(entry, indent=2) if args.json else "\n".join(describe(entry)))


def for_terminal(fragment: str, tty: bool) -> str:
    """A highlight (HTML-escaped, matches in <mark></mark>) for people: the escapes undone,
    matches in bold on a terminal, between [brackets] in a pipe or file."""
    start, end = ("\033[1m", "\033[0m") if tty else ("[", "]")
    return html.unescape(fragment.replace("<mark>", start).replace("</mark>", end))


async def _search(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    page = await artifacts.search(args.text or "", tags=tuple(args.tag or ()),
                                  content_types=tuple(args.type or ()), limit=args.limit,
                                  offset=args.offset)
    if args.json:
        print(json.dumps({"total": page.total, "facets": page.facets,
                          "facets_exact": page.facets_exact, "hits": [
            {"address": h.address, "name": h.name, "content_type": h.content_type,
             "tags": list(h.tags), "score": h.score, "highlights": dict(h.highlights)}
            for h in page.hits]}, indent=2))
        return
    print(f"{page.total} found" + (f", showing {args.offset + 1}-"
                                   f"{args.offset + len(page.hits)}" if page.hits else ""))
    for hit in page.hits:
        print(f"{hit.address[:19]}  {hit.name or '-':24} {hit.content_type:24} "
              f"{','.join(hit.tags)}")
        for field, fragments in hit.highlights.items():
            for fragment in fragments[:2]:
                print(f"    {field}: {for_terminal(fragment, sys.stdout.isatty())}")
    about = "" if page.facets_exact else "~"  # estimated from a sample of the result
    for facet, counts in page.facets.items():
        if counts:
            print(f"{facet}: " + ", ".join(f"{k} {about}{n}" for k, n in counts.items()))


async def _log(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    for version in reversed(await artifacts.versions(args.name)):
        print(f"{args.name}@{version['version']}  {version['address']}  "
              f"{when(version['created_at_ms'])}  {version['creator'] or '-'}  "
              f"{version['message']}")


async def _diff(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    sys.stdout.write(await artifacts.diff(args.old, args.new, metadata=args.metadata))


async def _lineage(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    direction = "up" if args.up else "down" if args.down else "both"
    graph = await artifacts.lineage(args.ref, direction)
    if args.json:
        print(json.dumps(graph, indent=2))
        return
    print(f"{len(graph['nodes'])} artifacts, {len(graph['edges'])} links")
    for edge in graph["edges"]:
        print(f"{edge['parent']} --{edge['relation']}--> {edge['child']}")


async def _stats(artifacts: ArtifactOps, args: argparse.Namespace) -> None:
    print(json.dumps(await artifacts.stats(), indent=2))


ACTIONS = {"put": _put, "get": _get, "info": _info, "search": _search, "log": _log,
           "diff": _diff, "lineage": _lineage, "stats": _stats}
NEEDS_BROKER = {"put", "get"}  # they send commands (the catalog, access counts)


def _deciders() -> tuple[Any, ...]:
    from streams.artifacts.catalog import ARTIFACTS

    return (ARTIFACTS,)


def cmd_artifact(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from streams.artifacts.client import ArtifactOps
    from streams.commands import CommandClient

    if args.action == "put" and args.file != "-" and not Path(args.file).is_file():
        raise PitError(f"no such file: {args.file}")

    async def run() -> None:
        sends = args.action in NEEDS_BROKER
        client = CommandClient(settings, "pit-cli", deciders=_deciders() if sends else ())
        artifacts = ArtifactOps(client)  # a component's CLI does not import PitClient
        if sends:
            await client.start()
        try:
            await ACTIONS[args.action](artifacts, args)
        finally:
            await client.close()

    asyncio.run(run())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    artifact = sub.add_parser("artifact", help="the Artifact Store: put, get, search, log, "
                                               "diff, lineage")
    actions = artifact.add_subparsers(dest="action", required=True)
    put = actions.add_parser("put", help="store a file (or - for stdin)")
    put.add_argument("file")
    put.add_argument("--name", help="version it under this name")
    put.add_argument("--type", help="content type (default: guessed from the file name)")
    put.add_argument("--tag", action="append", help="a tag (repeat for more)")
    put.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata")
    put.add_argument("--message", "-m", help="the version's message")
    put.add_argument("--derived-from", action="append", metavar="REF",
                     help="an artifact this one was computed from")
    put.add_argument("--creator", help="who stores it (default: pit-cli)")
    get = actions.add_parser("get", help="write an artifact's content (address, name or "
                                         "name@N) to stdout or a file")
    get.add_argument("ref")
    get.add_argument("--output", "-o", help="a file to write (streamed, atomic)")
    info = actions.add_parser("info", help="an artifact's catalog entry")
    info.add_argument("ref")
    info.add_argument("--json", action="store_true")
    search = actions.add_parser("search", help="full text over content and metadata")
    search.add_argument("text", nargs="?")
    search.add_argument("--tag", action="append", help="must have this tag (repeat: all)")
    search.add_argument("--type", action="append", help="content type (repeat: any)")
    search.add_argument("--limit", type=int, default=20)
    search.add_argument("--offset", type=int, default=0)
    search.add_argument("--json", action="store_true")
    log = actions.add_parser("log", help="a named artifact's versions, newest first")
    log.add_argument("name")
    diff = actions.add_parser("diff", help="unified diff of two text artifacts")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--metadata", action="store_true", help="compare metadata instead")
    lineage = actions.add_parser("lineage", help="what an artifact derives from and feeds")
    lineage.add_argument("ref")
    way = lineage.add_mutually_exclusive_group()
    way.add_argument("--up", action="store_true", help="ancestors only")
    way.add_argument("--down", action="store_true", help="descendants only")
    lineage.add_argument("--json", action="store_true")
    actions.add_parser("stats", help="deduplication statistics")
    artifact.set_defaults(run=cmd_artifact)
