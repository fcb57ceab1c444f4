"""AgentDojo's injection texts, rendered by AgentDojo's own attack classes (runs in bench/.venvs/agentdojo).

For every suite of the v1.2.2 benchmark, every registered attack (but `manual` and the important_instructions
variants that only change the names in it) and every injection task: the attack's text for one user task
(injection task i of a suite goes with the suite's user task i, cycling; AgentDojo fills the attack's
placeholders the user task sees), and the tool results that user task's ground-truth calls return from the
environment with those placeholders filled, formatted as AgentDojo formats them for the agent (YAML), those
that carry the attack's text. The victim model is named as bench/agentdojo/replay.py names it. Prints JSON:

    bench/.venvs/agentdojo/bin/python bench/detection/agentdojo_render.py > texts.json
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
from agentdojo.attacks.attack_registry import ATTACKS, load_attack
from agentdojo.functions_runtime import FunctionsRuntime
from agentdojo.task_suite.load_suites import get_suites

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agentdojo"))

# the replay's benchmark version, victim model name (AgentDojo writes it "GPT-4" in the text) and its test of
# whether a raw tool result carries the attack's text (the YAML the agent reads quotes and wraps it)
from replay import BENCHMARK_VERSION, TARGET_MODEL, contains_text, squash

SKIPPED = {"manual"}  # asks a human for the text


class _TargetPipeline:
    name = TARGET_MODEL


def attacks() -> list[str]:
    return sorted(a for a in ATTACKS if a not in SKIPPED and not a.startswith("important_instructions_"))


def tool_outputs(suite: Any, user_task: Any, injections: dict[str, str]) -> list[str]:
    """The results of the user task's ground-truth calls, as the agent reads them, that carry an injection."""
    env = suite.load_and_inject_default_environment(injections)
    runtime = FunctionsRuntime(suite.tools)
    needles = [squash(text) for text in injections.values() if text.strip()]
    found = []
    for call in user_task.ground_truth(env.model_copy(deep=True)):
        value, error = runtime.run_function(env, call.function, dict(call.args))
        if not error and contains_text(value, needles):
            found.append(tool_result_to_str(value))
    return found


def main() -> None:
    rows = []
    for suite_name, suite in sorted(get_suites(BENCHMARK_VERSION).items()):
        users = sorted(suite.user_tasks.values(), key=lambda t: int(t.ID.rsplit("_", 1)[1]))
        tasks = sorted(suite.injection_tasks.values(), key=lambda t: int(t.ID.rsplit("_", 1)[1]))
        for attack_name in attacks():
            attack = load_attack(attack_name, suite, _TargetPipeline())  # type: ignore[arg-type]
            for index, task in enumerate(tasks):
                user = users[index % len(users)]
                injections = attack.attack(user, task)
                texts = sorted(set(injections.values()))
                rows.append({"suite": suite_name, "attack": attack_name, "injection_task": task.ID,
                             "user_task": user.ID, "texts": texts,
                             "tool_outputs": tool_outputs(suite, user, injections)})  # fmt: skip
        print(f"{suite_name}: done", file=sys.stderr)
    meta = {"agentdojo": version("agentdojo"), "benchmark": BENCHMARK_VERSION, "target_model": TARGET_MODEL}
    json.dump({"meta": meta, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
