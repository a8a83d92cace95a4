"""Search benchmark for `pit bench`: p99 latency of a mix of searches over 100,000 artifacts
on the embedded backend (target < 100 ms), and the time to index them.

The corpus is synthetic and deterministic (seeded): names, content types, tags, metadata
and creators the way a team's artifacts look, and extracted text drawn from a
5,000-word vocabulary with Zipf-distributed frequencies (a few words in most documents,
most words in few), 20-300 words per text-like artifact, none for binary ones. The queries
are a seeded mix of what users type: single and double words drawn with the same skew
(so common words that match most of the corpus come up too), phrases, prefixes, filters
by tag, content type and creation time alone or with text, and browsing with no text;
every search computes the total and both facets. Only searching is timed for the p99:
quiet, then again with a process spinning on the other core (`_loaded`). Reported beside
them, in the same run, is the floor: the p99 of the engine's bare top k for the text of
each query (`SqlSearch.ranked`: no filter, count, facets, fields or highlights), and the
p99 as a multiple of it. The first search of a new process and indexing (in batches of
5,000, each one transaction) are reported apart.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate, islice, pairwise
from pathlib import Path

from sqlalchemy import Engine

from projections.search.model import SearchDoc, SearchQuery
from projections.search.sql import SqlSearch, sql_search
from streams.sql import connect

START_MS = 1_700_000_000_000
VOCABULARY = 20_000
COMMON = 100  # the most frequent words: function words, which nobody searches for alone
_SYLLABLES = ("ka", "lo", "mi", "ne", "ra", "su", "to", "vi", "ze", "qua", "bel", "dor",
              "fen", "gar", "hil", "jus", "kor", "lum", "mar", "nov", "pri", "sol", "tar",
              "ven", "wil", "xen", "yor", "zan", "bri", "cas", "del", "est", "fra", "gil",
              "hon", "ix", "jor", "kel", "mon", "ost", "pel", "rud", "sam", "tem", "ul")
_CONTENT_TYPES = (("application/json", 25, "json"), ("text/plain", 20, "txt"),
                  ("text/markdown", 15, "md"), ("text/csv", 15, "csv"),
                  ("text/x-python", 5, "py"), ("image/png", 12, "png"),
                  ("application/octet-stream", 8, "bin"))
_TEXTUAL = {"application/json", "text/plain", "text/markdown", "text/csv", "text/x-python"}
_STAGES = ("raw", "cleaned", "features", "trained", "evaluated", "published")


def _zipf(n: int) -> list[float]:
    """Cumulative Zipf weights (exponent 1) of n ranks, for random.choices."""
    return list(accumulate(1 / rank for rank in range(1, n + 1)))


class Corpus:
    """The seeded vocabulary, tags and people, and the documents drawn from them."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        words: dict[str, None] = {}
        while len(words) < VOCABULARY:
            words["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
        self.vocabulary = list(words)
        self.word_weights = _zipf(VOCABULARY)
        self.common = set(self.vocabulary[:COMMON])
        self.query_weights = _zipf(VOCABULARY - COMMON)
        kinds = ("team", "proj", "model", "dataset", "env", "quarter")
        self.tags = [f"{rng.choice(kinds)}-{word}" for word in self.vocabulary[1000:1300]]
        self.tag_weights = _zipf(len(self.tags))
        self.people = [f"{word}@example.com" for word in self.vocabulary[2000:2050]]
        self.types = [name for name, _, _ in _CONTENT_TYPES]
        self.type_weights = list(accumulate(weight for _, weight, _ in _CONTENT_TYPES))
        self.extensions = {name: ext for name, _, ext in _CONTENT_TYPES}
        self.phrases: list[str] = []  # word pairs that occur in some document

    def words(self, k: int) -> list[str]:
        return self.rng.choices(self.vocabulary, cum_weights=self.word_weights, k=k)

    def query_word(self) -> str:
        """A word as users search for it: any but the function words, the more frequent
        ones more often."""
        return self.rng.choices(self.vocabulary[COMMON:], cum_weights=self.query_weights)[0]

    def documents(self, n: int) -> Iterator[SearchDoc]:
        rng = self.rng
        for i in range(n):
            content_type = rng.choices(self.types, cum_weights=self.type_weights)[0]
            tags = rng.choices(self.tags, cum_weights=self.tag_weights, k=rng.randint(1, 4))
            stem = "-".join(rng.choices(self.vocabulary[COMMON:3000], k=2))
            body = self.words(rng.randint(20, 300)) if content_type in _TEXTUAL else []
            if body and i % 50 == 0:  # a phrase worth searching: no function words
                pairs = [f"{a} {b}" for a, b in pairwise(body)
                         if a not in self.common and b not in self.common]
                if pairs:
                    self.phrases.append(rng.choice(pairs))
            yield SearchDoc(
                address=f"sha256:{rng.getrandbits(256):064x}",
                name=f"{stem}-{i}.{self.extensions[content_type]}",
                content_type=content_type,
                tags=tuple(tags),
                created_at_ms=START_MS + i * 30_000 + rng.randint(0, 29_999),
                text=" ".join(body),
                metadata={"owner": rng.choice(self.people), "stage": rng.choice(_STAGES),
                          "run": f"run-{rng.randint(1, 5000)}"},
                creators=tuple(rng.sample(self.people, rng.randint(1, 2))),
            )

    def queries(self, count: int, n_docs: int) -> list[SearchQuery]:
        """The mix: 30% one word, 15% two, 10% a phrase from a document, 10% a prefix of 5-6
        letters (the synthetic words share short prefixes far more than natural ones), 10%
        a tag alone, 10% a word within a content type, 10% a word within a tenth of the
        time span, 5% browsing (no text, no filter); a tenth of them ask for page 2."""
        rng = self.rng
        span = n_docs * 30_000
        out = []
        for _ in range(count):
            kind = rng.random()
            offset = 20 if rng.random() < 0.1 else 0
            if kind < 0.30:
                query = SearchQuery(self.query_word(), offset=offset)
            elif kind < 0.45:
                query = SearchQuery(f"{self.query_word()} {self.query_word()}", offset=offset)
            elif kind < 0.55:
                query = SearchQuery(f'"{rng.choice(self.phrases)}"', offset=offset)
            elif kind < 0.65:
                query = SearchQuery(self.query_word()[:rng.randint(5, 6)] + "*")
            elif kind < 0.75:
                query = SearchQuery(tags=(rng.choice(self.tags),), offset=offset)
            elif kind < 0.85:
                query = SearchQuery(self.query_word(), content_types=(rng.choice(self.types),))
            elif kind < 0.95:
                start = START_MS + rng.randint(0, span)
                query = SearchQuery(self.query_word(), created_from_ms=start,
                                    created_to_ms=start + span // 10)
            else:
                query = SearchQuery(offset=offset)
            out.append(query)
        return out


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _timed(call: Callable[[SearchQuery], object], queries: list[SearchQuery]) -> list[float]:
    latencies = []
    for query in queries:
        began = time.perf_counter()
        call(query)
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


_FIRST = """
import sys, time
from projections.search.model import SearchQuery
from projections.search.sql import sql_search
from streams.sql import connect
backend = sql_search(connect(sys.argv[1]), prefix=sys.argv[2])
began = time.perf_counter()
backend.search(SearchQuery(sys.argv[3]))
print((time.perf_counter() - began) * 1000)
"""


def first_search_ms(url: str, prefix: str, text: str) -> float:
    """The first search of a new process (its imports done, as in a service): statements
    compiled, tables opened, pages read for the first time by this process."""
    done = subprocess.run([sys.executable, "-c", _FIRST, url, prefix, text], check=True,
                          capture_output=True, text=True)
    return float(done.stdout)


@contextmanager
def other_core_busy() -> Iterator[None]:
    """A process spinning (on the other core of two) while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it get scheduled
        yield
    finally:
        spinner.kill()
        spinner.wait()


def run(backend: SqlSearch, n: int, queries: int, seed: int) -> dict[str, float]:
    corpus = Corpus(seed)
    backend.reset()
    documents = corpus.documents(n)
    started = time.perf_counter()
    while batch := list(islice(documents, 5000)):
        backend.index(batch)
    index_s = time.perf_counter() - started
    mix = corpus.queries(queries, n)
    url = backend.bind.engine.url.render_as_string(hide_password=False)
    first_ms = first_search_ms(url, backend.prefix, mix[0].text)
    # the floor: the engine's bare top k of each query's text (no filter, count, facets,
    # fields or highlights)
    bare = [SearchQuery(query.text, limit=query.limit, offset=query.offset)
            for query in mix if query.text]
    for query in mix[:20]:  # warm the page cache the way a running service has it
        backend.search(query)
    latencies, floor = _timed(backend.search, mix), _timed(backend.ranked, bare)
    with other_core_busy():
        loaded, floor_loaded = _timed(backend.search, mix), _timed(backend.ranked, bare)
    p99, p99_loaded = _percentile(latencies, 0.99), _percentile(loaded, 0.99)
    floor_p99, floor_p99_loaded = _percentile(floor, 0.99), _percentile(floor_loaded, 0.99)
    return {
        "search_p99_ms_100k": round(p99, 2),
        "search_p50_ms_100k": round(statistics.median(latencies), 2),
        "search_max_ms_100k": round(max(latencies), 2),
        "search_p99_ms_100k_loaded": round(p99_loaded, 2),
        "search_p50_ms_100k_loaded": round(statistics.median(loaded), 2),
        "search_floor_p99_ms_100k": round(floor_p99, 2),
        "search_floor_p99_ms_100k_loaded": round(floor_p99_loaded, 2),
        "search_p99_vs_floor": round(p99 / floor_p99, 2) if floor_p99 else 0.0,
        "search_p99_vs_floor_loaded": round(p99_loaded / floor_p99_loaded, 2)
        if floor_p99_loaded else 0.0,
        "search_first_ms_100k": round(first_ms, 2),
        "search_index_s_100k": round(index_s, 2),
        "search_index_docs_per_s": round(n / index_s) if index_s else 0,
        "search_docs": n,
        "search_queries": queries,
    }


def search_p99_100k(engine_or_path: Engine | str | Path | None = None, n: int = 100_000, *,
                    queries: int = 500, seed: int = 7) -> dict[str, float]:
    """Index `n` seeded artifacts and time `queries` searches. `engine_or_path`: a views
    database Engine (the bench writes tables `bench_search_*` and drops them), a SQLite
    file path, or None for a temporary SQLite file."""
    if isinstance(engine_or_path, Engine):
        backend = sql_search(engine_or_path, prefix="bench_search")
        try:
            return run(backend, n, queries, seed)
        finally:
            backend.drop()
    with tempfile.TemporaryDirectory(prefix="pit-search-bench-") as scratch:
        path = Path(engine_or_path or Path(scratch) / "search.db")
        engine = connect(f"sqlite:///{path}")
        try:
            return run(sql_search(engine), n, queries, seed)
        finally:
            engine.dispose()
