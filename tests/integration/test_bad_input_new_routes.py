"""Bad input on the policy, approval and audit routes gets an OpenAI-style 4xx, never a 500."""

import pytest


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/v1/tool-calls/check", b"", 400),
        ("post", "/v1/tool-calls/check", b"{not json", 400),
        ("post", "/v1/tool-calls/check", b'{"calls": "send_email"}', 400),
        ("post", "/v1/tool-calls/check", b'{"calls": [{"name": ""}]}', 400),
        ("post", "/v1/tool-calls/check", b'{"calls": [{"name": "x", "arguments": 5}]}', 400),
        ("post", "/v1/tool-calls/check", b'{"calls": [{"name": "x"}], "session_id": "bad id!"}', 404),
        ("post", "/v1/approvals/apr_x", b"[]", 400),
        ("post", "/v1/approvals/apr_x", b'{"decision": "approve", "note": 7}', 400),
        ("post", "/v1/approvals/" + "x" * 300, b'{"decision": "approve"}', 404),
        ("get", "/v1/approvals?limit=abc", None, 400),
        ("get", "/v1/approvals?limit=0", None, 400),
        ("get", "/v1/sessions?limit=0.0", None, 400),
        ("get", "/v1/sessions?limit=-5", None, 400),
        ("get", "/v1/audit/sessions?limit=1001", None, 400),
        ("get", "/v1/audit/sessions?since=yesterday", None, 400),
        ("get", "/v1/audit/sessions?decision=maybe", None, 400),
        ("get", "/v1/audit/sessions/no%20such%20session", None, 404),
        ("get", "/v1/audit/sessions/unknown", None, 404),
    ],
)
async def test_bad_input_is_a_clear_client_error(make_client, method, path, body, status):
    async with make_client() as client:
        if method == "post":
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = await client.get(path)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
