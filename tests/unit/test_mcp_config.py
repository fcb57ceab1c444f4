"""policies/mcp.yaml: every problem at once with file:line; no file means no servers; the shipped file loads."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest

from gateway.mcp.calls import apply_texts, refusal_text, result_texts
from gateway.mcp.config import load_mcp_config
from gateway.mcp.pinning import definition_sha256
from rails.config import RailsConfigError
from rails.tools.decide import ToolDecision

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_file_loads_with_no_server():
    config = load_mcp_config(ROOT / "policies" / "mcp.yaml")
    assert config.file.enabled == () and config.file.pinning.on_change == "block" and config.version


def test_no_file_is_no_server(tmp_path):
    assert load_mcp_config(tmp_path / "mcp.yaml").file.servers == ()


def test_every_error_is_listed_with_its_line(tmp_path):
    path = tmp_path / "mcp.yaml"
    path.write_text(
        "version: 1\n"
        "servers:\n"
        "  - name: a\n"
        "    url: ftp://nope\n"
        "  - name: b\n"
        "    command: [python]\n"
        "    url: http://x:1/mcp\n"
        "  - name: bad name!\n"
        "    command: [x]\n"
        "  - name: d\n"
        "    command: [x]\n"
        "    timeout: 3\n"
        "pinning: {on_change: ask}\n"
    )
    with pytest.raises(RailsConfigError) as caught:
        load_mcp_config(path)
    errors = caught.value.errors
    assert any(e.startswith(f"{path}:3:") and "not an http(s) URL" in e for e in errors)
    assert any(e.startswith(f"{path}:5:") and "exactly one of url" in e for e in errors)
    assert any(e.startswith(f"{path}:8:") for e in errors)
    assert any(e.startswith(f"{path}:12:") and "timeout" in e for e in errors)
    assert len(errors) == 4  # the pinning error is reported once the servers are valid


def test_a_definition_hash_covers_name_description_and_schema():
    tool = types.Tool(name="t", description="d", input_schema={"type": "object"})
    assert definition_sha256(tool) == definition_sha256(tool.model_copy())
    assert definition_sha256(tool) != definition_sha256(tool.model_copy(update={"description": "d2"}))
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    assert definition_sha256(tool) != definition_sha256(tool.model_copy(update={"input_schema": schema}))


def test_masked_texts_replace_text_and_structured_content():
    result = types.CallToolResult(content=[types.TextContent(type="text", text="mail a@b.example")],
                                  structured_content={"to": "a@b.example"})  # fmt: skip
    texts = result_texts(result)
    masked = apply_texts(result, texts, ["mail [EMAIL]", '{"to": "[EMAIL]"}'])
    assert masked.content[0].text == "mail [EMAIL]" and masked.structured_content == {"to": "[EMAIL]"}
    broken = apply_texts(result, texts, ["mail [EMAIL]", '{"to": [EMAIL]}'])
    assert broken.structured_content is None  # a mask that broke the JSON: dropped, the text still says it


def test_refusals_tell_the_model_what_to_do():
    withheld = ToolDecision("c", "pay", "require_approval", "over the limit", "r", ticket="apr_1")
    assert "ticket apr_1" in refusal_text(withheld) and "same call again" in refusal_text(withheld)
    assert "do not retry it unchanged" in refusal_text(ToolDecision("c", "pay", "deny", "no", "r"))
