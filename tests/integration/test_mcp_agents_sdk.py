"""An agent framework's MCP integration against Sentrail: the OpenAI Agents SDK runs an agent whose model is
Sentrail's chat endpoint (a scripted engine) and whose tools come from Sentrail's /mcp
(`agents.mcp.MCPServerStreamableHttp`), both with one X-Session-Id: the framework lists the tools, the chat path
releases the model's call, the framework executes it over MCP (as that call), and the session holds all of it."""

from __future__ import annotations

import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.mcp import MCPServerStreamableHttp
from openai import AsyncOpenAI

from tests.doubles import ScriptedEngine, calls_chunks, text_chunks
from tests.integration.mcp_support import MODEL, NOTES, served, stdio, write_policies


class TwoTurns(ScriptedEngine):
    """The model's first turn calls a tool; after the tool result it answers."""

    async def generate(self, request, request_id):
        self.script = text_chunks("The time server said UTC.") if len(self.requests) else self.first
        async for chunk in super().generate(request, request_id):
            yield chunk


@pytest.fixture
def policies(tmp_path, redis_server):
    redis_server.flush()
    servers = stdio("time", "-m", "mcp_server_time", "--local-timezone", "UTC") + stdio("notes", *NOTES)
    return write_policies(tmp_path / "policies", servers)


async def test_the_openai_agents_sdk_runs_an_agent_on_sentrails_chat_and_mcp(redis_server, policies):
    set_tracing_disabled(True)
    engine = TwoTurns()
    engine.first = calls_chunks(("get_current_time", '{"timezone": "UTC"}', "call_t1"))
    async with served(redis_server, policies, engine=engine) as (base, app):
        headers = {"X-Session-Id": "s-agent"}
        tools = MCPServerStreamableHttp({"url": f"{base}/mcp", "headers": headers}, name="sentrail")
        async with tools:
            listed = {tool.name for tool in await tools.list_tools()}
            assert {"get_current_time", "read_note", "send_email"} <= listed
            denied = await tools.call_tool("send_email", {"to": "eve@evil.test", "body": "x"})
            assert denied.is_error and "blocked by policy" in denied.content[0].text
            client = AsyncOpenAI(base_url=f"{base}/v1", api_key="not-needed")
            model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
            agent = Agent(name="clock", instructions="Tell the time.", model=model, mcp_servers=[tools],
                          model_settings=ModelSettings(extra_headers=headers))  # fmt: skip
            result = await Runner.run(agent, "What time is it in UTC?")
        steps = await app.state.sessions.steps("dev", "s-agent")
    assert result.final_output == "The time server said UTC."
    tool_message = engine.requests[1].messages[-1]
    assert tool_message.tool_call_id == "call_t1" and "UTC" in str(tool_message.content)
    assert [s["api"] for s in steps] == ["mcp", "chat", "mcp", "chat"]
    assert steps[2]["tool_calls"][0]["call_id"] == "call_t1" and steps[2]["tool_calls"][0]["rule"] == "released"
