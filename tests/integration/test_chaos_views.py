"""The chaos campaign's view check (streams/campaigns/chaos.py `view_differences`): the live
views against the same views rebuilt from the archive. After a seeded pool run they agree;
a row edited behind the projector's back is found and named."""

from __future__ import annotations

from sqlalchemy import text
from test_pool_views import Pool, story

from projections.runtime import Projector, create_schema
from schemas.codec import Codec
from streams.campaigns.chaos import view_differences
from streams.components import views
from streams.config import Settings
from streams.sql import connect


def test_the_view_check_finds_a_view_that_drifted_from_the_log(tmp_path, codec: Codec) -> None:
    settings = Settings(data_dir=tmp_path)
    engine = connect(settings.db_url)
    create_schema(engine, views(settings))
    pool = Pool(codec)
    story(pool)
    Projector(engine, views(settings), codec=codec).apply_batch(pool.records)
    assert view_differences(engine, settings, codec) == []

    with engine.begin() as conn:
        conn.execute(text("UPDATE pool_models SET state = 'Hot' WHERE model_id = 'm1'"))
    (difference,) = view_differences(engine, settings, codec)
    assert difference.startswith(
        "pool_models: 1 rows only live, 1 only rebuilt, e.g. ('default', 'm1'")
    engine.dispose()
