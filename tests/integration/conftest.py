import io
import shutil
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.http.app import create_app
from gateway.observability import configure_logging
from gateway.settings import load_settings
from gateway.stores.keys import KeyStore
from tests.doubles import ScriptedEngine

MODEL = "test-model"


@pytest.fixture
def spans():
    return InMemorySpanExporter()


@pytest.fixture
def logs():
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream, cache=False)
    return stream


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def permissive_policies(tmp_path_factory):
    """The shipped rails with a tool policy that allows every call: for tests of the API's mechanics.
    Tests of the tool policy itself use the shipped policies/tools.yaml."""
    folder = tmp_path_factory.mktemp("policies")
    shutil.copy(ROOT / "policies" / "rails.yaml", folder / "rails.yaml")
    (folder / "tools.yaml").write_text("version: 1\ndefault: allow\n")
    return folder


@pytest.fixture
def make_client(spans, logs, redis_server, permissive_policies):
    """Build the real app around scripted engines and a real Redis: make_client(engine, limit=..., **settings).
    Development mode (no keys) unless `dev_mode=False` is passed."""
    redis_server.flush()

    def make(*engines: ScriptedEngine, limit: int = 8, **overrides):
        overrides = {"redis_url": redis_server.url, "dev_mode": True, "key_cache_s": 0,
                     "policies_dir": str(permissive_policies), **overrides}  # fmt: skip
        settings = load_settings(environ={}, **overrides)
        app = create_app(
            settings,
            engines={MODEL: [(e, limit) for e in engines or (ScriptedEngine(),)]},
            span_processors=[SimpleSpanProcessor(spans)],
        )
        return AsyncTestClient(app)

    return make


@pytest.fixture
async def keys(redis_server):
    """A KeyStore on the test's own event loop (the app under test runs on the test client's loop)."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield KeyStore(client)
    await client.aclose()
