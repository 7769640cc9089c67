"""The pytest plugin, as a user gets it: pytest run in a fresh directory with no conftest, on a file
that only imports arc_actors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from snippets import snippet

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "test_with_plugin.py"

CONTRACT = """
import asyncio

from arc_actors import Agent, Client, handles

SERVERS = []


class Echo(Agent):
    agent_id = "echo-agent"

    @handles("echo.say")
    def say(self, params, context):
        return params


def test_arc_server_serves_agent_classes_with_an_admin_endpoint_on_request(arc_server):
    plain, admin = arc_server(Echo), arc_server([Echo], admin=True)
    assert plain.admin_url is None
    assert admin.admin_url == f"http://127.0.0.1:{admin.admin_port}/faults"
    assert plain.port != admin.port
    assert plain.server.agent_ids == admin.server.agent_ids == ["echo-agent"]


def test_arc_faults_arms_faults_on_a_given_server(arc_server, arc_faults):
    running = arc_server(Echo)
    SERVERS.append(running.server)
    injector = arc_faults("echo-agent.echo.say:error=1:-42004", on=running)
    assert injector.plan.specs() == ["echo-agent.echo.say:error=1:-42004"]
    client = Client(running.url, raise_errors=False)
    answer = asyncio.run(client.call("echo.say", "echo-agent", {"x": 1}))
    assert answer.error["code"] == -42004


def test_faults_armed_by_the_last_test_were_disarmed():
    assert SERVERS[0].faults.plan.specs() == []
    assert SERVERS[0].faults.injected["echo-agent"]["error"] == 1


def test_fixtures_that_need_an_app_say_so_when_there_is_none(arc_client):
    raise AssertionError("never reached")
"""


def pytest_in(directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_example_passes_in_a_fresh_project_that_only_installs_arc_actors(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    done = pytest_in(tmp_path, EXAMPLE.name)
    assert sorted(path.name for path in tmp_path.iterdir()) == [EXAMPLE.name]
    assert done.returncode == 0, done.stdout + done.stderr
    plugins = next(line for line in done.stdout.splitlines() if line.startswith("plugins:"))
    assert "arc-actors" in plugins
    assert re.fullmatch(r"=+ 3 passed in [\d.]+s =+", done.stdout.strip().splitlines()[-1]), done.stdout


def test_plugin_fixtures_serve_arm_disarm_and_explain_a_missing_app(tmp_path):
    (tmp_path / "test_contract.py").write_text(CONTRACT)
    done = pytest_in(tmp_path, "-q", "test_contract.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.fullmatch(r"3 passed, 1 error in [\d.]+s", done.stdout.strip().splitlines()[-1]), done.stdout
    assert "define an `arc_app` fixture returning a Server or Agent subclasses" in done.stdout


@pytest.mark.parametrize(
    ("page", "marker"),
    [("docs/testing.md", "def test_support_agent"), ("docs/resilience.md", "def test_finance_agent")],
)
def test_the_plugin_example_of_the_docs_passes_in_a_fresh_project(tmp_path, page, marker):
    (tmp_path / "test_docs_example.py").write_text(snippet(page, marker).source)
    done = pytest_in(tmp_path, "-q", "test_docs_example.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"1 passed in [\d.]+s", done.stdout.strip().splitlines()[-1]), done.stdout
