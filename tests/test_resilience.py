"""The issue's proof, run as the README shows it: the demo agents with 20% crashes and 5% hangs (longer
than the watchdog) on finance-agent, under a bounded chaos load."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker: str) -> str:
    return next(block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if marker in block)


def test_readme_chaos_run_loses_nothing_and_every_injected_crash_and_hang_is_one_restart():
    source = readme_block("run_chaos(")
    namespace: dict = {"__name__": "readme_resilience"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "README.md", "exec"), namespace)
    report, server = namespace["report"], namespace["server"]
    injected = server.faults.injected
    print(printed.getvalue())  # the chaos report: shown with pytest -s

    assert (report.sent, report.answered, report.lost) == (300, 300, 0)
    for bystander in ("hr-agent", "support-agent"):
        agent = report.agents[bystander]
        assert (agent.answered, agent.lost, agent.errors, agent.restarts) == (agent.sent, 0, {}, 0)
        assert injected[bystander] == {"crash": 0, "hang": 0, "latency": 0, "error": 0}
    finance = report.agents["finance-agent"]
    crashes, hangs = injected["finance-agent"]["crash"], injected["finance-agent"]["hang"]
    assert crashes > 0 and hangs > 0
    assert (finance.answered, finance.lost) == (finance.sent, 0)
    assert finance.errors == {-41006: hangs, -32603: crashes}
    assert finance.restarts == crashes + hangs
    assert report.errors == finance.errors
    assert printed.getvalue().splitlines()[-1] == "nothing lost: 300 of 300 requests answered"
    # The seed fixes which agent each request goes to and what each agent's requests meet: the counts
    # the README shows are the counts of every run.
    assert injected["finance-agent"] == json.loads(re.search(r"injected\[\"finance-agent\"\]  # (\{.*\})", source)[1])
