"""The MCP gateway with the real model: the OpenAI Agents SDK runs an agent whose model is `sentrail serve` over the
real vLLM engine (SmolLM2) and whose tools come from the same gateway's /mcp, in front of mcp-server-time over
stdio, with one X-Session-Id. The model picks the MCP tool from the schema Sentrail listed, the chat path judges
and releases its call, the SDK executes it over /mcp (as that call: judged once), and the result goes back to
the model: one session, every step recorded without a flag.

SmolLM2-135M only calls tools when `tool_choice` is `required`; the SDK resets it after the call
(`reset_tool_choice`), so the model then answers in prose. Strict schemas (`convert_schemas_to_strict`) keep its
arguments valid."""

import shutil
import uuid

import httpx
import pytest

from engines.process import free_port

from .conftest import ROOT, serve, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def with_mcp(gateway, model, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mcp")
    policies = shutil.copytree(ROOT / "policies", folder / "policies")
    (policies / "mcp.yaml").write_text(
        "version: 1\nservers:\n  - name: time\n    command: [python, -m, mcp_server_time, --local-timezone, UTC]\n"
    )
    port = free_port()
    config = {"port": port, "dev_mode": True, "data_dir": str(folder / "data"), "policies_dir": str(policies),
              "models": [{"id": model, "engines": [{"kind": "remote", "url": gateway.engine_url}]}]}  # fmt: skip
    process = serve(config, folder, timeout_s=120)
    yield f"http://127.0.0.1:{port}"
    stop(process, 30)


async def test_an_agent_calls_an_mcp_tool_the_model_chose_in_one_session(with_mcp, model):
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from agents.mcp import MCPServerStreamableHttp, create_static_tool_filter
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    session = f"mcp-agent-{uuid.uuid4().hex[:12]}"
    headers = {"X-Session-Id": session}
    client = AsyncOpenAI(base_url=f"{with_mcp}/v1", api_key="not-needed", max_retries=0, timeout=120,
                         default_headers=headers)  # fmt: skip
    only = create_static_tool_filter(allowed_tool_names=["get_current_time"])
    tools = MCPServerStreamableHttp({"url": f"{with_mcp}/mcp", "headers": headers, "timeout": 30}, name="sentrail",
                                    tool_filter=only)  # fmt: skip
    agent = Agent(name="Clock", instructions="Use the tool to tell the current time in the timezone asked for.",
                  model=OpenAIChatCompletionsModel(model=model, openai_client=client), mcp_servers=[tools],
                  mcp_config={"convert_schemas_to_strict": True},
                  model_settings=ModelSettings(temperature=0, max_tokens=128, tool_choice="required"))  # fmt: skip
    async with tools:
        result = await Runner.run(agent, "What time is it in Asia/Tokyo?", max_turns=4)
    async with httpx.AsyncClient(timeout=10) as http:
        record = (await http.get(f"{with_mcp}/v1/sessions/{session}")).json()
    steps = record["steps"]
    apis = [step["api"] for step in steps]
    assert apis[:3] == ["chat", "mcp", "chat"], apis
    (proposed,) = steps[0]["emitted"]["tool_calls"]
    assert proposed["name"] == "get_current_time"
    (executed,) = steps[1]["tool_calls"]
    assert executed["call_id"] == proposed["id"] and executed["rule"] == "released"  # judged once, on the chat path
    assert steps[1]["received"][0]["tool_call_id"] == proposed["id"]
    assert all(step["flags"] == [] for step in steps), steps  # the result the agent sent back is no bypass
    assert result.final_output is not None
