"""The embedded registry over HTTP (projections/schema_api.py), checked with a client we did
not write: confluent-kafka's `SchemaRegistryClient` and `AvroDeserializer` decode an event
read raw from the embedded broker, with `pit up`'s address as the registry URL."""

from __future__ import annotations

import asyncio

import aiohttp
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from test_timers_live import records

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.history import read_topic
from streams.pool.topics import POOL_EVENTS

SENTIMENT = "python:streams.pool.examples:sentiment"
REGISTERED = "pit.pool.ModelRegistered"


async def test_confluents_deserializer_decodes_our_events_through_pit_ups_registry(
        tmp_path, free_port) -> None:
    port = free_port()
    async with Stack(Settings(data_dir=tmp_path), http_port=port, progress=False,
                     without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="registry-test") as pit:
        assert (await pit.pool.register_model("reg-m", SENTIMENT, 50, 5)).accepted
        raw = next(r for r in await read_topic(stack.settings, POOL_EVENTS, stack.engine)
                   if r.value is not None and stack.codec.decode(r.value).name == REGISTERED)
        ours = next(r for name, r, _ in await records(stack, POOL_EVENTS) if name == REGISTERED)

        def decode() -> dict:
            client = SchemaRegistryClient({"url": f"http://127.0.0.1:{port}"})
            deserializer = AvroDeserializer(client)
            return deserializer(raw.value, SerializationContext(POOL_EVENTS, MessageField.VALUE))

        theirs = await asyncio.to_thread(decode)  # a blocking client: off the Pit's loop
        assert theirs == ours and theirs["model_id"] == "reg-m"


async def test_subjects_versions_and_the_registrys_own_errors(tmp_path, free_port) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with Stack(Settings(data_dir=tmp_path), http_port=port, progress=False,
                     without={"host-monitor"}) as stack, aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, object]:
            async with http.get(base + path) as reply:
                assert reply.content_type == "application/vnd.schemaregistry.v1+json"
                return reply.status, await reply.json()

        status, subjects = await get("/subjects")
        assert status == 200 and REGISTERED in subjects
        ids = stack.registry.subjects()[REGISTERED]
        assert await get(f"/subjects/{REGISTERED}/versions") == (
            200, list(range(1, len(ids) + 1)))
        status, latest = await get(f"/subjects/{REGISTERED}/versions/latest")
        assert status == 200 and (latest["version"], latest["id"]) == (len(ids), ids[-1])
        assert latest == (await get(f"/subjects/{REGISTERED}/versions/{len(ids)}"))[1]
        assert await get("/subjects/nope/versions") == (
            404, {"error_code": 40401, "message": "Subject 'nope' not found."})
        assert (await get(f"/subjects/{REGISTERED}/versions/999"))[1]["error_code"] == 40402
        assert (await get(f"/subjects/{REGISTERED}/versions/x"))[1]["error_code"] == 42202
        assert (await get("/schemas/ids/1"))[1]["error_code"] == 40403
