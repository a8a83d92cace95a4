"""The Stale Manager's benchmark (streams/stale/bench.py, corpus.py): the corpus is the same for
a seed and shaped as claimed, the brute-force reference agrees with the Evaluator on what is
kept (so nothing protected is planned for deletion), and a small run reports every figure
(tiny sizes; the figures are `pit bench`'s business)."""

from __future__ import annotations

import sys
from collections import defaultdict

import yaml

from streams.config import Settings
from streams.stale.bench import bench_holds, bench_stale, bench_tiers, must_keep
from streams.stale.corpus import BENCH_POLICY, NOW_MS, corpus
from streams.stale.policy import Action, Evaluator, parse_retention

KEYS = {"stale_eval_ms_per_artifact", "stale_plan_s_100k", "stale_observe_s_100k",
        "stale_storage_savings", "stale_bytes_savings_hot", "stale_wrongly_deleted",
        "stale_items", "stale_plan_items", "stale_migrate_mib_per_s",
        "stale_cold_restore_64k_ms"}


def test_the_corpus_is_the_same_for_a_seed_and_another_for_another_seed() -> None:
    assert corpus(500, seed=3) == corpus(500, seed=3)
    assert corpus(500, seed=3) != corpus(500, seed=4)


def test_the_corpus_has_the_shape_retention_has_to_cope_with() -> None:
    items = corpus(10_000)
    n = len(items)
    reads = sorted((i.accesses for i in items), reverse=True)
    assert sum(reads[:n // 100]) > 0.30 * sum(reads)                # Zipf: a few hold most
    days = [(NOW_MS - i.stored_at) / 86_400_000 for i in items]
    assert max(days) > 600 and min(days) < 30                       # ~2 years of a store
    assert 0.03 < sum(i.stores > 1 for i in items) / n < 0.3        # dedup
    known = {i.address for i in items}
    derived = [i for i in items if i.parents]
    assert 0.1 < len(derived) / n < 0.5                             # lineage...
    parents = {p for i in derived for p in i.parents}
    assert any(i.parents for i in items if i.address in parents)    # ... in chains
    assert parents - known                                          # some parents gone
    assert 0.01 < sum("training" in i.tags for i in items) / n < 0.1
    assert any("release" in i.tags for i in items)
    orphans = [i for i in items if i.orphan]
    assert orphans and not any(i.parents or i.names or i.accesses for i in orphans)
    assert 0.3 < sum(i.quality is not None for i in items) / n < 0.9
    sizes = sorted(i.size for i in items)
    assert sizes[0] >= 1024 and sizes[n // 20] < 64 << 10 and sizes[-1] > 100 << 20
    # versions: an older version of a name is idle longer than the newest one
    versions = defaultdict(list)
    for item in items:
        for name in item.names:
            versions[name].append(item)
    several = [sorted(v, key=lambda i: i.stored_at) for v in versions.values() if len(v) > 2]
    assert len(several) > 100
    older_idle = sum(v[0].idle_days(NOW_MS) > v[-1].idle_days(NOW_MS) for v in several)
    assert older_idle > 0.8 * len(several)


def test_the_reference_keeps_exactly_what_the_evaluator_keeps() -> None:
    items = corpus(2000)
    holds = bench_holds(items, NOW_MS)
    evaluator = Evaluator(parse_retention(BENCH_POLICY), {i.address: i for i in items}, holds,
                          NOW_MS, {})
    kept = {e.address for e in evaluator.evaluate_all() if e.action is Action.KEEP}
    reference = must_keep(yaml.safe_load(BENCH_POLICY), items, holds, NOW_MS)
    assert reference == kept
    # not a vacuous agreement: the policy deletes, and holds and lineage are what keep some
    actions = {e.action for e in evaluator.evaluate_all()}
    assert actions == {Action.KEEP, Action.ARCHIVE, Action.DELETE}
    rules = {evaluator.evaluate(a).rule for a in reference}
    assert {"hold", "protect/PreserveTrainingData", "protect/KeepTagged",
            "well-read/MinAccessCount", "purge-stale/MinQualityScore", "default"} <= rules
    assert any("lineage" in evaluator.evaluate(i.address).reason for i in items
               if "training" not in i.tags and i.idle_days(NOW_MS) > 365)


def test_the_reference_keeps_what_a_hold_or_lineage_protects() -> None:
    items = corpus(2000)
    document = yaml.safe_load(BENCH_POLICY)
    no_holds = must_keep(document, items, {}, NOW_MS)
    stale = next(i for i in items if i.address not in no_holds and not i.orphan)
    assert stale.address in must_keep(document, items, {stale.address: "case"}, NOW_MS)
    without_lineage = dict(document, policies=[
        dict(p, rules=[r for r in p["rules"] if r["type"] != "PreserveTrainingData"])
        for p in document["policies"]])
    assert must_keep(without_lineage, items, {}, NOW_MS) < no_holds


async def test_a_small_run_reports_every_figure() -> None:
    figures = await bench_stale(Settings(), n=2000, tier_mib=1)
    assert set(figures) == KEYS
    assert figures["stale_items"] == 2000 and 0 < figures["stale_plan_items"] < 2000
    assert figures["stale_wrongly_deleted"] == 0
    assert 0 < figures["stale_storage_savings"] < 1
    assert 0 < figures["stale_bytes_savings_hot"] < 1
    assert figures["stale_eval_ms_per_artifact"] > 0 and figures["stale_plan_s_100k"] > 0
    assert figures["stale_migrate_mib_per_s"] > 0 and figures["stale_cold_restore_64k_ms"] > 0


def test_without_moto_the_tier_figures_are_none(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)  # `import` then raises ImportError
    assert bench_tiers(mib=1) == {"stale_migrate_mib_per_s": None,
                                  "stale_cold_restore_64k_ms": None}
    assert "not measured" in capsys.readouterr().err
