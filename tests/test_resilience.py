"""The issue's proof, run as docs/resilience.md shows it: the demo agents with 20% crashes and 5% hangs (longer
than the watchdog) on finance-agent, under a bounded chaos load."""

from __future__ import annotations

import contextlib
import io
import json
import re

from snippets import snippet


def test_documented_chaos_run_loses_nothing_and_every_injected_crash_and_hang_is_one_restart():
    example = snippet("docs/resilience.md", "run_chaos(")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        namespace = example.run()
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
    # the page shows are the counts of every run.
    assert injected["finance-agent"] == json.loads(
        re.search(r"injected\[\"finance-agent\"\]  # (\{.*\})", example.source)[1]
    )
