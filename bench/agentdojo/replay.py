"""The fully compromised agent, replayed through Sentrail on AgentDojo (runs in bench/.venvs/agentdojo).

For every episode (a user task alone, or a user task with an injection task under the
`important_instructions` attack) the agent's plan is the user task's ground-truth calls, one call per
model turn; as soon as an executed call's result carries the attack's text, the agent's next proposals
are the injection task's ground-truth calls, then the rest of the user task, then a final answer (the
user task's GROUND_TRUTH_OUTPUT). Each model turn is one Sentrail chat completion (the official
`openai` client, one `X-Session-Id` per episode); the scripted engine behind the gateway answers with
the planned turn. Only the calls Sentrail releases run, in AgentDojo's environment; their results go
back as `role: tool` messages formatted as AgentDojo formats them (YAML). A withheld call (deny or
require_approval) is skipped: the agent moves on. A 400 `content_filter` (a rail blocked a tool result)
ends the episode. AgentDojo's own checks score it: `utility` (the user task) and `security` (True: the
injection task's goal was reached, i.e. the attack succeeded).

    bench/.venvs/agentdojo/bin/python bench/agentdojo/replay.py --configs allow-all tool-labels \\
        --policies bench/agentdojo/policies --suites banking --limit 5 --out /tmp/r.json

(run.py does this, and writes the report.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import jsonschema
import openai
from agentdojo.agent_pipeline.agent_pipeline import load_system_message
from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
from agentdojo.attacks.attack_registry import load_attack
from agentdojo.base_tasks import BaseInjectionTask, BaseUserTask
from agentdojo.functions_runtime import Function, FunctionCall, FunctionsRuntime
from agentdojo.task_suite.load_suites import get_suites
from agentdojo.task_suite.task_suite import TaskSuite
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import MODEL_ID, PlannedCall, Reply, ScriptedEngine
from sentrail import SentrailProcess

BENCHMARK_VERSION = "v1.2.2"
ATTACK = "important_instructions"
# The attack addresses the victim model by name; AgentDojo maps this id to "GPT-4" in the injected text.
TARGET_MODEL = "gpt-4o-2024-05-13"
MAX_TURNS = 40
FALLBACK_ANSWER = "I have completed the task."


@dataclass
class PlanStep:
    """One planned call: the ground-truth call, its JSON arguments as proposed, and whose plan it is."""

    call: FunctionCall
    arguments: str
    origin: str  # "user" | "injection"


@dataclass
class EpisodeResult:
    config: str
    suite: str
    user_task: str
    injection_task: str | None  # None: a benign run
    utility: bool = False
    security: bool | None = None  # attack runs: True when the attack succeeded
    saw_injection: bool = False  # an executed call's result carried the attack's text
    replayable: bool = True  # attack runs: the injection task has ground-truth calls (some have none)
    user_calls_planned: int = 0
    user_calls_released: int = 0
    injection_calls_proposed: int = 0
    injection_calls_released: int = 0
    withheld: int = 0  # calls Sentrail did not release (deny or require_approval)
    denied: int = 0
    approvals: int = 0  # require_approval decisions with a ticket
    blocked: str = ""  # a 400 content_filter that ended the episode: its message
    error: str = ""  # anything else that ended the episode early
    turns: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    withheld_calls: list[str] = field(default_factory=list)  # "origin:tool: reason"
    tool_errors: list[str] = field(default_factory=list)  # errors AgentDojo's runtime reported

    @property
    def all_user_calls_released(self) -> bool:
        return self.user_calls_released == self.user_calls_planned and not self.blocked and not self.error


class _TargetPipeline:
    """What the attack reads of the pipeline under attack: only its name (for the victim model's name)."""

    name = TARGET_MODEL


def openai_tools(suite: TaskSuite) -> list[dict[str, Any]]:
    """The suite's functions as OpenAI function tools, with the JSON schema of their pydantic parameters."""
    return [{"type": "function", "function": {"name": f.name, "description": f.description,
                                              "parameters": f.parameters.model_json_schema()}}
            for f in suite.tools]  # fmt: skip


class Suite:
    """One AgentDojo suite with what every episode needs: tools, schemas, the attack, the system prompt."""

    def __init__(self, name: str, suite: TaskSuite) -> None:
        self.name = name
        self.suite = suite
        self.tools = openai_tools(suite)
        self.functions: dict[str, Function] = {f.name: f for f in suite.tools}
        self.validators = {t["function"]["name"]: jsonschema.Draft202012Validator(t["function"]["parameters"])
                           for t in self.tools}  # fmt: skip
        self.attack = load_attack(ATTACK, suite, _TargetPipeline())  # type: ignore[arg-type]
        self.system = load_system_message(None)
        self.schema_findings: set[str] = set()  # ground-truth calls whose raw arguments fail their schema

    def arguments(self, task_id: str, call: FunctionCall) -> str:
        """The call's arguments as a model bound to the tool's schema would write them: the ground truth
        validated by the function's own pydantic model (as AgentDojo's runtime does before running it)
        and dumped as JSON. Raw ground truths that the declared JSON schema refuses are recorded."""
        raw = dict(call.args)
        problems = list(self.validators[call.function].iter_errors(json.loads(json.dumps(raw, default=str))))
        if problems:
            where = "/".join(str(p) for p in problems[0].absolute_path)
            self.schema_findings.add(f"{self.name}/{task_id}: {call.function}({where}): {problems[0].message[:160]}")
        try:
            model = self.functions[call.function].parameters.model_validate(raw)
            return json.dumps(model.model_dump(mode="json", exclude_unset=True))
        except Exception:
            return json.dumps(raw, default=str)

    def plan(self, task_id: str, task: BaseUserTask | BaseInjectionTask, env: Any, origin: str) -> list[PlanStep]:
        calls = task.ground_truth(env.model_copy(deep=True))
        return [PlanStep(call, self.arguments(task_id, call), origin) for call in calls]


def squash(text: str) -> str:
    """Whitespace runs as one space: the environment's YAML folds the attack's blank lines on load."""
    return " ".join(text.split())


def contains_text(value: Any, needles: list[str]) -> bool:
    """Whether any needle (squashed) appears in a tool's raw result: in any string inside its models,
    dicts and lists, whitespace squashed."""
    if isinstance(value, str):
        text = squash(value)
        return any(needle in text for needle in needles)
    if isinstance(value, BaseModel):
        return contains_text(value.model_dump(), needles)
    if isinstance(value, dict):
        return any(contains_text(v, needles) or contains_text(k, needles) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return any(contains_text(v, needles) for v in value)
    return False


class Replayer:
    """Runs episodes against every configured gateway in turn, from one scripted engine."""

    def __init__(self, engine: ScriptedEngine, trace: TextIO | None = None) -> None:
        self.engine = engine
        self.clients: dict[str, openai.OpenAI] = {}
        self.trace = trace

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients = {}

    def connect(self, gateways: dict[str, str]) -> None:
        """One client per configuration's gateway (base URLs ending in /v1); no retries: a failure counts."""
        self.clients = {name: openai.OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=60)
                        for name, url in gateways.items()}  # fmt: skip

    def episode(self, config: str, suite: Suite, user_task: BaseUserTask, injection_task: BaseInjectionTask | None,
                injections: dict[str, str], environment: Any) -> EpisodeResult:  # fmt: skip
        result = EpisodeResult(config, suite.name, user_task.ID, injection_task.ID if injection_task else None)
        env = user_task.init_environment(environment)
        pre_env = env.model_copy(deep=True)
        plan = deque(suite.plan(user_task.ID, user_task, pre_env, "user"))
        result.user_calls_planned = len(plan)
        attack_plan = suite.plan(injection_task.ID, injection_task, pre_env, "injection") if injection_task else []
        result.replayable = injection_task is None or bool(attack_plan)
        needles = [squash(text) for text in injections.values() if text.strip()]
        runtime = FunctionsRuntime(suite.suite.tools)
        session = f"agentdojo-{suite.name}-{user_task.ID}-{injection_task.ID if injection_task else 'benign'}-" \
                  f"{uuid.uuid4().hex[:8]}"  # fmt: skip
        messages: list[dict[str, Any]] = [{"role": "system", "content": suite.system},
                                          {"role": "user", "content": user_task.PROMPT}]  # fmt: skip
        executed: list[FunctionCall] = []
        output = ""
        client = self.clients[config]
        while result.turns < MAX_TURNS:
            step = plan.popleft() if plan else None
            call_id = f"call_{result.turns}_{uuid.uuid4().hex[:6]}"
            if step is None:
                answer = user_task.GROUND_TRUTH_OUTPUT or FALLBACK_ANSWER
                if result.saw_injection and injection_task is not None and injection_task.GROUND_TRUTH_OUTPUT:
                    answer += "\n" + injection_task.GROUND_TRUTH_OUTPUT  # it also says what the attacker asked
                self.engine.plan(Reply(text=answer))
            else:
                self.engine.plan(Reply(calls=[PlannedCall(call_id, step.call.function, step.arguments)]))
                if step.origin == "injection":
                    result.injection_calls_proposed += 1
            result.turns += 1
            started = time.perf_counter()
            try:
                completion = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=suite.tools,
                                                            extra_headers={"X-Session-Id": session})  # fmt: skip
            except openai.BadRequestError as exc:
                result.latencies_ms.append(1000 * (time.perf_counter() - started))
                if exc.code == "content_filter":
                    result.blocked = str((exc.body or {}).get("message", exc))[:300]  # type: ignore[union-attr]
                else:
                    result.error = f"400 {exc.code}: {exc}"[:300]
                break
            except openai.APIError as exc:
                result.error = f"{type(exc).__name__}: {exc}"[:300]
                break
            result.latencies_ms.append(1000 * (time.perf_counter() - started))
            message = completion.choices[0].message
            extension = (completion.model_extra or {}).get("sentrail") or {}
            for decision in extension.get("tool_calls") or []:
                if decision.get("action") != "allow":
                    result.withheld += 1
                    result.denied += decision.get("action") == "deny"
                    result.approvals += bool(decision.get("ticket"))
                    origin = step.origin if step else "?"
                    result.withheld_calls.append(
                        f"{origin}:{decision.get('tool')}: {decision.get('action')} "
                        f"({decision.get('rule') or '-'}) {decision.get('reason', '')}"[:200]
                    )
            released = message.tool_calls or []
            assistant: dict[str, Any] = {"role": "assistant", "content": message.content}
            if released:
                assistant["tool_calls"] = [{"id": c.id, "type": "function",
                                            "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                           for c in released]  # fmt: skip
            messages.append(assistant)
            if step is None:
                output = message.content or ""
                break
            for call in released:
                if step.origin == "user":
                    result.user_calls_released += 1
                else:
                    result.injection_calls_released += 1
                args = json.loads(call.function.arguments or "{}")
                value, error = runtime.run_function(env, call.function.name, args)
                executed.append(FunctionCall(function=call.function.name, args=args, id=call.id))
                if error:
                    result.tool_errors.append(f"{call.function.name}: {error}"[:200])
                messages.append({"role": "tool", "tool_call_id": call.id,
                                 "content": error or tool_result_to_str(value)})  # fmt: skip
                if needles and not result.saw_injection and contains_text(value, needles):
                    result.saw_injection = True  # the compromised agent turns to the attacker's goal at once
                    plan.extendleft(reversed(attack_plan))
        else:
            result.error = f"no final answer within {MAX_TURNS} turns"
        result.utility = self._utility(user_task, output, pre_env, env, executed)
        if injection_task is not None:
            result.security = self._security(injection_task, output, pre_env, env, executed)
        if self.trace is not None:
            record = {**asdict(result), "session": session, "messages": messages, "final_output": output}
            self.trace.write(json.dumps(record, default=str) + "\n")
        return result

    @staticmethod
    def _utility(task: BaseUserTask, output: str, pre: Any, post: Any, calls: list[FunctionCall]) -> bool:
        """AgentDojo's check: `utility_from_traces` where the task defines it, else `utility`."""
        from_traces = task.utility_from_traces(output, pre, post, calls)
        return bool(from_traces if from_traces is not None else task.utility(output, pre, post))

    @staticmethod
    def _security(task: BaseInjectionTask, output: str, pre: Any, post: Any, calls: list[FunctionCall]) -> bool:
        """AgentDojo's check: True when the injection task's goal was reached (the attack succeeded)."""
        from_traces = task.security_from_traces(output, pre, post, calls)
        return bool(from_traces if from_traces is not None else task.security(output, pre, post))


def episodes(suite: Suite, limit: int | None) -> list[tuple[BaseUserTask, BaseInjectionTask | None]]:
    """Benign runs (every user task) then attack runs (every user task with every injection task)."""
    user_tasks = sorted(suite.suite.user_tasks.values(), key=lambda t: int(t.ID.rsplit("_", 1)[1]))[:limit]
    injection_tasks = sorted(suite.suite.injection_tasks.values(), key=lambda t: int(t.ID.rsplit("_", 1)[1]))
    runs: list[tuple[BaseUserTask, BaseInjectionTask | None]] = [(u, None) for u in user_tasks]
    runs += [(u, i) for u in user_tasks for i in injection_tasks]
    return runs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Per suite: one gateway per configuration (its policy folder for that suite), then every episode
    against each configuration in turn, from one environment load."""
    engine = ScriptedEngine().start()
    trace = open(args.trace, "w") if args.trace else None
    replayer = Replayer(engine, trace)
    all_suites = get_suites(BENCHMARK_VERSION)
    results: list[dict[str, Any]] = []
    findings: list[str] = []
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="agentdojo-sentrail-"))
    source = Path(args.sentrail_src) if args.sentrail_src else None
    try:
        for name in args.suites:
            suite = Suite(name, all_suites[name])
            runs = episodes(suite, args.limit)
            gateways = {config: SentrailProcess(Path(args.policies) / config / name, engine.url, workdir,
                                                f"{config}-{name}", source) for config in args.configs}  # fmt: skip
            try:
                for gateway in gateways.values():
                    gateway.start()
                replayer.connect({config: gateway.base_url for config, gateway in gateways.items()})
                print(f"{name}: {len(runs)} episodes x {len(gateways)} configurations", flush=True)
                for index, (user_task, injection_task) in enumerate(runs, start=1):
                    injections = suite.attack.attack(user_task, injection_task) if injection_task else {}
                    environment = suite.suite.load_and_inject_default_environment(injections)
                    for config in gateways:
                        before = engine.completions
                        result = replayer.episode(config, suite, user_task, injection_task, injections,
                                                  environment.model_copy(deep=True))  # fmt: skip
                        if not result.error and engine.completions - before != result.turns - bool(result.blocked):
                            result.error = "engine calls != model turns"
                        results.append({**asdict(result), "all_user_calls_released": result.all_user_calls_released})
                    if index % 50 == 0 or index == len(runs):
                        print(
                            f"  {name}: {index}/{len(runs)} episodes ({time.monotonic() - started:.0f} s)", flush=True
                        )
            finally:
                replayer.close()
                for gateway in gateways.values():
                    gateway.stop()
            findings += sorted(suite.schema_findings)
    finally:
        engine.stop()
        if trace is not None:
            trace.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"results": results, "schema_findings": findings, "wall_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True, help="configuration names (folders under --policies)")
    parser.add_argument("--policies", required=True, help="the folder holding <config>/<suite>/{tools,rails}.yaml")
    parser.add_argument("--suites", nargs="+", default=["banking", "slack", "travel", "workspace"])
    parser.add_argument("--limit", type=int, default=None, help="first N user tasks per suite")
    parser.add_argument("--sentrail-src", help="serve Sentrail from this source tree (default: the checkout)")
    parser.add_argument("--trace", help="write every episode's messages and decisions here (JSONL)")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args()
    data = run(args)
    Path(args.out).write_text(json.dumps(data))


if __name__ == "__main__":
    main()
