import io

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from gateway.observability import configure_logging
from gateway.settings import load_settings
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


@pytest.fixture
def make_client(spans, logs):
    """Build the real app around scripted engines: make_client(engine, limit=..., **settings)."""

    def make(*engines: ScriptedEngine, limit: int = 8, **overrides):
        settings = load_settings(environ={}, **overrides)
        app = create_app(
            settings,
            engines={MODEL: [(e, limit) for e in engines or (ScriptedEngine(),)]},
            span_processors=[SimpleSpanProcessor(spans)],
        )
        return AsyncTestClient(app)

    return make
