import msgspec
import pytest

from engines.base import EngineRejected, EngineUnavailable, Overloaded
from gateway.errors import ERRORS, STATUS_ERROR_TYPES, ModelNotFound, describe, kind_of, sse_error_event, to_error_body


@pytest.mark.parametrize(
    ("exc", "status", "openai_type"),
    [
        (ModelNotFound("x"), 404, "invalid_request_error"),
        (EngineRejected("bad"), 400, "invalid_request_error"),
        (EngineUnavailable("down"), 503, "server_error"),
        (Overloaded("full"), 429, "rate_limit_error"),
    ],
)
def test_exceptions_map_through_the_table(exc, status, openai_type):
    error_type, message, _ = describe(exc)
    assert kind_of(error_type) == (status, openai_type)
    assert message == str(exc)


def test_unknown_exceptions_never_leak_details():
    error_type, message, param = describe(RuntimeError("secret path /etc/shadow"))
    assert error_type == "internal_error"
    assert "shadow" not in message
    assert param is None


def test_every_table_entry_is_a_client_or_server_status():
    for error_type, kind in ERRORS.items():
        assert 400 <= kind.status < 600, error_type
    assert set(STATUS_ERROR_TYPES.values()) <= set(ERRORS)


def test_error_body_has_openai_shape():
    body = msgspec.json.decode(msgspec.json.encode(to_error_body("model_not_found", "nope", "model")))
    assert body == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    }


def test_sse_error_event_is_one_data_line():
    event = sse_error_event(EngineUnavailable("engine died"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert msgspec.json.decode(event[6:])["error"]["code"] == "engine_unavailable"
