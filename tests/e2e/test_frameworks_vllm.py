"""Real agent frameworks, unmodified, run through `sentrail serve --dev` with the shipped `policies/` folder
(generic `tools.yaml`: `default: allow` plus provenance rules; `rails.yaml`) over the real vLLM engine:

- pydantic-ai: an `Agent` with a structured `output_type`, answered through its own `final_result` tool;
- OpenAI Agents SDK: a handoff (`transfer_to_weather`) to an agent with one function tool;
- LangChain / LangGraph: `create_react_agent` over `ChatOpenAI.bind_tools` with a `@tool`.

Each runs plain and streamed. What this proves is not answer quality but that the policy layer releases every
call a framework makes with its own tools (each decision `allow` in the session record, no step flagged) and
that each framework's wire format (tool schemas, tool calls, tool results, streams) works with the gateway.

SmolLM2-135M only calls tools when `tool_choice` is `required` or names a function, so every scenario forces
the call it needs, with temperature 0, a `max_tokens` with room for the call's JSON (it pads with whitespace:
a cut-off call is refused as invalid JSON) and the framework's own bound on turns. The frameworks send the
session id in `X-Session-Id` through their OpenAI clients' default headers."""

import uuid
from typing import Literal

import httpx
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from engines.process import free_port

from .conftest import ROOT, serve, stop

pytestmark = pytest.mark.e2e

TOOL_CALL_TOKENS = 128  # a forced call takes SmolLM2 45 to 80 tokens, most of them whitespace
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])


@pytest.fixture(scope="module")
def shipped(gateway, model, tmp_path_factory) -> str:
    """`sentrail serve` in dev mode (as `make serve` runs it) on the repository's own `policies/` folder, untouched.
    Its engine is the session gateway's vLLM server, as a remote engine: the same engine and model as `make serve`
    without starting a second one."""
    folder = tmp_path_factory.mktemp("frameworks")
    port = free_port()
    config = {"port": port, "dev_mode": True, "data_dir": str(folder / "data"), "policies_dir": str(ROOT / "policies"),
              "models": [{"id": model, "engines": [{"kind": "remote", "url": gateway.engine_url}]}]}  # fmt: skip
    process = serve(config, folder, timeout_s=120)
    yield f"http://127.0.0.1:{port}"
    stop(process, 30)


def new_session(framework: str) -> str:
    return f"{framework}-{uuid.uuid4().hex[:12]}"


def async_client(base_url: str, session: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=120,
                       default_headers={"X-Session-Id": session})  # fmt: skip


def recorded(base_url: str, session: str) -> dict:
    """The session as the gateway recorded it; it is listed by `GET /v1/sessions` too."""
    listed = httpx.get(f"{base_url}/v1/sessions", params={"limit": 100}, timeout=10).json()["data"]
    assert session in [s["id"] for s in listed]
    record = httpx.get(f"{base_url}/v1/sessions/{session}", timeout=10).json()
    assert record["session"]["labels"] == []
    for step in record["steps"]:  # no bypass, no unknown tool-call id, nothing blocked
        assert step["flags"] == [], step
    return record


def decided(record: dict) -> list[tuple[str, str]]:
    """(tool, action) of every call the model proposed, in order."""
    return [(d["tool"], d["action"]) for step in record["steps"] for d in step["tool_calls"]]


def tool_results(record: dict) -> list[dict]:
    return [m for step in record["steps"] for m in step["received"] if m["role"] == "tool"]


class Capital(BaseModel):
    country: Literal["France", "Italy", "Spain"]
    city: Literal["Paris", "Rome", "Madrid"]


@STREAMED
async def test_pydantic_ai_structured_output_through_final_result(shipped, model, streamed):
    from pydantic_ai import Agent, UsageLimits
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    session = new_session("pydantic-ai")
    provider = OpenAIProvider(openai_client=async_client(shipped, session))
    # A structured output type and no other tool: pydantic-ai sends its `final_result` tool (strict) with
    # tool_choice "required" by itself.
    agent = Agent(OpenAIChatModel(model, provider=provider), output_type=Capital,
                  model_settings={"temperature": 0, "max_tokens": TOOL_CALL_TOKENS})  # fmt: skip
    prompt, limits = "What is the capital of France?", UsageLimits(request_limit=2)
    if streamed:
        async with agent.run_stream(prompt, usage_limits=limits) as run:
            output = await run.get_output()
    else:
        output = (await agent.run(prompt, usage_limits=limits)).output

    assert isinstance(output, Capital)
    record = recorded(shipped, session)
    assert decided(record) == [("final_result", "allow")]
    assert record["steps"][0]["emitted"]["finish_reason"] == "tool_calls"


@STREAMED
async def test_openai_agents_sdk_handoff_and_function_tool(shipped, model, streamed):
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    session = new_session("openai-agents")
    chat_model = OpenAIChatCompletionsModel(model=model, openai_client=async_client(shipped, session))
    looked_up: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        looked_up.append(city)
        return f"Sunny, 21 C in {city}"

    def settings(**forced) -> ModelSettings:
        return ModelSettings(temperature=0, max_tokens=TOOL_CALL_TOKENS, **forced)

    # Triage can only hand off, Weather can only look up: with tool_choice "required" each makes its one call.
    # After Weather's tool ran, the SDK resets tool_choice (`reset_tool_choice`), so it answers in prose and the
    # run ends; `max_turns` bounds it otherwise.
    weather = Agent(name="Weather", instructions="Look up the weather and report it in one sentence.",
                    model=chat_model, tools=[get_weather], model_settings=settings(tool_choice="required"))  # fmt: skip
    triage = Agent(name="Triage", instructions="Hand weather questions off to the weather agent.",
                   model=chat_model, handoffs=[weather], model_settings=settings(tool_choice="required"))  # fmt: skip
    prompt = "What is the weather in Paris?"
    if streamed:
        result = Runner.run_streamed(triage, prompt, max_turns=4)
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(triage, prompt, max_turns=4)

    assert result.last_agent is weather
    assert isinstance(result.final_output, str) and result.final_output
    assert len(looked_up) == 1
    record = recorded(shipped, session)
    assert decided(record) == [("transfer_to_weather", "allow"), ("get_weather", "allow")]
    emitted = [call["id"] for step in record["steps"] for call in step["emitted"]["tool_calls"]]
    results = tool_results(record)  # the handoff's and the tool's results came back for the calls released
    assert [m["tool_call_id"] for m in results] == emitted and all(m["known"] for m in results)
    assert results[1]["content"] == f"Sunny, 21 C in {looked_up[0]}"
    assert record["steps"][-1]["emitted"]["finish_reason"] == "stop"


@STREAMED
def test_langgraph_react_agent_with_a_langchain_tool(shipped, model, streamed):
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    session = new_session("langgraph")
    looked_up: list[str] = []

    # `return_direct`: the graph ends once the tool ran. A forced tool_choice would otherwise make the model
    # call it again on every turn, until the recursion limit.
    @tool(return_direct=True)
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        looked_up.append(city)
        return f"Sunny, 21 C in {city}"

    llm = ChatOpenAI(model=model, base_url=f"{shipped}/v1", api_key="not-needed", temperature=0,
                     max_tokens=TOOL_CALL_TOKENS, streaming=streamed, max_retries=0, timeout=120,
                     default_headers={"X-Session-Id": session})  # fmt: skip
    agent = create_react_agent(llm.bind_tools([get_weather], tool_choice="required", strict=True), [get_weather])
    state = agent.invoke({"messages": [("user", "What is the weather in Paris?")]}, {"recursion_limit": 4})

    asked, answered = state["messages"][-2:]
    assert isinstance(asked, AIMessage) and [c["name"] for c in asked.tool_calls] == ["get_weather"]
    assert isinstance(answered, ToolMessage) and answered.tool_call_id == asked.tool_calls[0]["id"]
    assert len(looked_up) == 1 and answered.content == f"Sunny, 21 C in {looked_up[0]}"

    # The next turn sends LangChain's transcript, tool result included, back through the same session.
    reply = llm.bind(max_tokens=24).invoke(state["messages"])
    assert isinstance(reply, AIMessage) and not reply.tool_calls
    record = recorded(shipped, session)
    assert decided(record) == [("get_weather", "allow")]
    (result,) = tool_results(record)
    assert result["known"] and result["tool_call_id"] == asked.tool_calls[0]["id"]
    assert result["content"] == answered.content
