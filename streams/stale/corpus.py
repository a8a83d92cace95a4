"""A synthetic store for the Stale Manager's benchmark (`pit bench stale`, bench.py): what a Pit
holds after two years of use, seeded and deterministic, so every run plans over the same
100,000 artifacts and figures can be compared run to run.

The shape is what retention has to cope with, not a uniform draw:
* age: stored over ~2 years, more of it recently (the store grows);
* popularity: a Zipf rank per artifact, its reads decaying with age (a few artifacts hold
  most reads, the long tail is read a handful of times, old ones barely);
* versions: names carry several versions; a superseded version stops being read, so older
  versions are idle;
* dedup: some content was stored several times (`stores` > 1, each store refreshing it);
* lineage: derived artifacts name earlier ones as parents, chains of them, and now and then
  a parent long gone from the store;
* tags: training sets ("training", mostly derived data, so their lineage matters),
  releases, and tags no policy looks at;
* quality scores for most, sizes log-normal from KiB to hundreds of MiB, a few orphans
  (blobs nothing references), some within their grace period.

`BENCH_POLICY` is the retention document the benchmark plans with: the policy of a team that
keeps releases, training data and what is read, deletes what nobody used for a year unless
it is of high quality, and archives what has been idle for a quarter.
"""

from __future__ import annotations

import hashlib
import math
import random

from streams.stale.policy import DAY_MS, Item

NOW_MS = 1_800_000_000_000  # a fixed instant: the same corpus, and figures, every run
SPAN_DAYS = 730.0
MIB = 1 << 20

# A keep rule speaks for its whole policy at that policy's priority (policy.py): so the
# quality exception of purge-stale also shields items from archive-idle below it - they
# stay kept, and go to the warm tier when idle and of low value.
BENCH_POLICY = """\
policies:
  - name: protect            # releases, and training data with everything it derives from
    priority: 200
    rules:
      - {type: KeepTagged, tags: [release]}
      - {type: PreserveTrainingData}
  - name: well-read
    priority: 150
    rules:
      - {type: MinAccessCount, count: 50}
  - name: purge-stale        # a year without a read: deleted, unless of high quality
    priority: 100
    rules:
      - {type: MaxAge, days: 365}
      - {type: MinQualityScore, score: 0.85}
  - name: archive-idle       # a quarter without a read: to the cold tier
    priority: 10
    rules:
      - {type: MaxAge, days: 90, action: archive}
tiers: {warm_after_days: 30, warm_below: 0.35}
trash_days: 7
orphan_grace_hours: 24
plan_ttl_hours: 24
"""

_OTHER_TAGS = ("checkpoint", "eval", "log", "dataset", "prompt", "report")


def address_of(seed: int, i: int) -> str:
    """A content address for the corpus's `i`th artifact (a sha256, as the store's)."""
    return "sha256:" + hashlib.sha256(f"pit-stale-bench/{seed}/{i}".encode()).hexdigest()


def _last_read_days(rng: random.Random, reads: int, age_days: float, interest_days: float
                    ) -> float:
    """Days after its store of an artifact's last read: reads cluster after it is made (the
    run that uses it, an evaluation), their times exponential with mean `interest_days`
    (longer for popular ones), so the last is the latest of `reads` such times within its age:
    drawn by inverting the maximum's distribution, in O(1)."""
    if reads == 0:
        return 0.0
    within = -math.expm1(-age_days / interest_days)  # P(one read falls within the age)
    drawn = within * rng.random() ** (1 / reads)
    return age_days if drawn >= 1 else min(age_days, -interest_days * math.log1p(-drawn))


def corpus(n: int = 100_000, seed: int = 7, now_ms: int = NOW_MS) -> list[Item]:
    """`n` artifacts as the Stale Manager observes them at `now_ms`, in the order they were
    first stored (see the module's docstring for their shape)."""
    rng = random.Random(seed)
    # Age: span * u^1.6 puts ~27% of the store in its last 3 months and ~35% over a year old.
    ages = sorted((SPAN_DAYS * rng.random() ** 1.6 for _ in range(n)), reverse=True)
    stored = [now_ms - int(age * DAY_MS) for age in ages]
    orphan = [rng.random() < 0.005 for _ in range(n)]
    # Zipf popularity: rank r is read in proportion to 1/r^1.1, ranks shuffled over the items.
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)

    # Versions: an artifact is a new version of a recently updated name (35%), the first
    # version of a new name (55%), or an unnamed intermediate output (10%).
    names: list[str] = []
    latest: dict[str, int] = {}           # name -> its newest version so far
    name_of: list[str | None] = [None] * n
    superseded_at: list[int | None] = [None] * n
    for i in range(n):
        if orphan[i]:
            continue
        draw = rng.random()
        if draw < 0.35 and names:
            back = int(rng.expovariate(1 / 300))
            name = names[-1 - back if back < len(names) else rng.randrange(len(names))]
            superseded_at[latest[name]] = stored[i]
        elif draw < 0.90:
            name = f"run-{seed}-{len(names)}/output"
            names.append(name)
        else:
            continue
        name_of[i], latest[name] = name, i

    items: list[Item] = []
    for i in range(n):
        address = address_of(seed, i)
        age_ms = now_ms - stored[i]
        size = min(max(int(rng.lognormvariate(math.log(1.5 * MIB), 2.3)), 1024), 2 << 30)
        if orphan[i]:  # a blob nothing references: never read, first seen when stored
            items.append(Item(address, size, stored[i], stored[i], orphan=True))
            continue
        age_days = age_ms / DAY_MS
        expected = 20 * n / ranks[i] ** 1.1 * 0.5 ** (age_days / 120)
        until = superseded_at[i]
        if until is not None:  # reads stop once a newer version exists
            expected *= max(0.05, (until - stored[i]) / max(1, age_ms))
        accesses = int(expected) + (rng.random() < expected - int(expected))
        # Interest lasts ~2 weeks for the median artifact, over a year for the most read.
        last_read = stored[i] + int(_last_read_days(
            rng, accesses, age_days, 14 * (n / ranks[i]) ** 0.3) * DAY_MS)
        if until is not None:
            last_read = min(last_read, until + int(rng.random() * 7 * DAY_MS))
        stores = 1
        if rng.random() < 0.10:  # the same content stored again, by other runs
            stores = 2 + int(rng.expovariate(1 / 1.5))
            last_read = max(last_read, stored[i] + int(age_ms * rng.random()))
        last_used = min(now_ms, max(stored[i], last_read))

        parents: tuple[str, ...] = ()
        if i > 0 and rng.random() < 0.30:  # derived from earlier, mostly recent, artifacts
            chosen = {max(0, i - 1 - int(rng.expovariate(1 / 300)))
                      for _ in range(1 if rng.random() < 0.75 else 2)}
            parents = tuple(address_of(seed, j) for j in sorted(chosen) if not orphan[j])
            if rng.random() < 0.02:  # a parent purged long ago: lineage outlives content
                parents += (address_of(seed + 1, i),)

        tags: list[str] = []
        if rng.random() < (0.08 if parents else 0.01):
            tags.append("training")
            size *= 4  # training sets are larger than the average artifact
        if name_of[i] is not None and rng.random() < (0.01 if until is not None else 0.03):
            tags.append("release")
        if rng.random() < 0.4:
            tags.append(rng.choice(_OTHER_TAGS))
        quality = round(rng.betavariate(4, 2), 3) if rng.random() < 0.7 else None
        item_name = name_of[i]
        items.append(Item(address, size, stored[i], last_used, accesses, quality,
                          tuple(sorted(set(tags))), parents,
                          (item_name,) if item_name is not None else (), stores))
    return items
