"""``python -m arc_actors serve`` as a user runs it: a real process, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT, arc_post, envelope, free_port, start, wait_healthy

import arc_actors
from arc_actors import Server
from arc_actors.cli import main


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_without_app_serves_the_demo_agents_and_stops_cleanly_on_a_signal(stopper, stop_signal):
    port = free_port()
    process = start("serve", "--port", str(port))
    stopper(process)
    health = wait_healthy(port, process)
    assert set(health["agents"]) == {"finance-agent", "hr-agent", "support-agent", "report-agent"}
    message = {"role": "user", "parts": [{"type": "text", "content": "Question about salary"}]}
    answer = arc_post(port, envelope("hr-agent", "chat.start", {"initialMessage": message}))
    content = answer["result"]["chat"]["message"]["parts"][0]["content"]
    assert content == "I can help with salary inquiries. Please provide your employee ID."
    process.send_signal(stop_signal)
    assert process.wait(timeout=15) == 0
    assert "Traceback" not in process.stderr.read()


def test_serve_a_file_app(stopper):
    port = free_port()
    process = start("serve", "examples/actor_agents.py", "--port", str(port))
    stopper(process)
    wait_healthy(port, process)
    hello = {"role": "user", "parts": [{"type": "text", "content": "hello"}]}
    answer = arc_post(port, envelope("support-agent", "chat.start", {"initialMessage": hello}))
    assert answer["result"]["chat"]["message"]["parts"][0]["content"] == "Support agent ready"
    process.terminate()
    assert process.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("app", "complaint"),
    [
        ("no_such_module:server", "cannot import APP module 'no_such_module'"),
        ("examples/missing.py", "does not exist"),
        ("arc_actors.demo:nothing_here", "is nothing, not an arc_actors Server"),
        ("arc_actors.demo:first_text", "calling arc_actors.demo.first_text() failed: TypeError"),
        ("arc_actors.demo:FinanceAgent", "is FinanceAgent, not an arc_actors Server"),
    ],
)
def test_bad_app_is_a_one_line_error(app, complaint):
    process = start("serve", app, "--port", str(free_port()))
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert complaint in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start("serve", "--port", str(port))
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"arc_actors: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in stderr


def test_help_explains_serve():
    process = start("serve", "--help")
    stdout, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    for word in ("APP", "--host", "--port", "module:attribute", "finance-agent"):
        assert word in stdout


def admin_call(method: str, port: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/faults", method=method)
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def test_serve_with_faults_injects_them_and_the_admin_endpoint_clears_them(stopper):
    port, admin_port = free_port(), free_port()
    process = start(
        "serve",
        *("--port", str(port), "--admin-port", str(admin_port), "--fault-seed", "3"),
        *("--fault", "hr-agent:error=1:-41002", "--fault", "finance-agent.chat.start:latency=1:1ms"),
    )
    stopper(process)
    wait_healthy(port, process)
    salary = {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": "salary"}]}}
    refused = arc_post(port, envelope("hr-agent", "chat.start", salary))
    listed = admin_call("GET", admin_port)
    cleared = admin_call("DELETE", admin_port)
    answered = arc_post(port, envelope("hr-agent", "chat.start", salary))
    process.terminate()
    assert process.wait(timeout=15) == 0
    assert refused["error"]["code"] == -41002
    assert listed["faults"] == ["hr-agent:error=1:-41002", "finance-agent.chat.start:latency=1:1ms"]
    assert listed["seed"] == 3
    assert listed["injected"]["hr-agent"]["error"] == 1
    assert cleared["faults"] == []
    assert answered["error"] is None


def test_admin_port_in_use_is_a_one_line_error_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        process = start("serve", "--port", str(free_port()), "--admin-port", str(admin_port))
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"arc_actors: cannot listen on 127.0.0.1:{admin_port} for the admin endpoint")
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("finance-agent", "--fault 'finance-agent': expected AGENT[.METHOD]:KIND=P[:ARG],..."),
        ("finance-agent:crash=2", "--fault 'finance-agent:crash=2': 'crash=2': probability '2' is not in [0, 1]"),
        ("hr-agent:hang=0.1", "--fault 'hr-agent:hang=0.1': 'hang=0.1': hang needs a duration, e.g. hang=0.1:5s"),
        ("payroll:crash=1", "--fault 'payroll:crash=1': no agent 'payroll' on this server (agents: finance-agent,"),
    ],
)
def test_bad_fault_is_a_one_line_error_and_nothing_is_served(capsys, monkeypatch, spec, complaint):
    monkeypatch.setattr(Server, "run", lambda *args, **kwargs: pytest.fail("served despite a bad --fault"))
    assert main(["serve", "--port", str(free_port()), "--fault", spec]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"arc_actors: {complaint}")
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_a_script_using_the_library_prints_nothing_until_it_configures_logging():
    script = (
        "import asyncio\n"
        "from arc_actors import Client\n"
        "from arc_actors.demo import build_server\n"
        "from arc_actors.testing import serving\n"
        "with serving(build_server()) as running:\n"
        "    asyncio.run(Client(running.url).call('chat.start', 'hr-agent', {'initialMessage': "
        "{'role': 'user', 'parts': [{'type': 'TextPart', 'content': 'salary'}]}}))\n"
        "print('done')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    # Before: the runtime's INFO and DEBUG lines ("4 agents started", "draining", ...) on the script's stderr.
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")


def test_version_and_the_help_name_what_is_served():
    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "arc_actors", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout

    assert cli("--version").strip() == f"arc-actors {arc_actors.__version__}"
    # Before: three demo agents named, where four are served (argparse may break a line at a hyphen).
    assert "finance-agent,hr-agent,support-agent,report-agent." in "".join(cli("serve", "--help").split())


@pytest.mark.parametrize(
    ("args", "environ", "complaint"),
    [
        (["--port", "99999"], {}, "flag --port: Expected `int` <= 65535"),
        (["--port", "-1"], {}, "flag --port: Expected `int` >= 0"),
        ([], {"ARC_PORT": "70000"}, "environment variable ARC_PORT: Expected `int` <= 65535"),
        ([], {"ARC_LOG_LEVEL": "verbose"}, "environment variable ARC_LOG_LEVEL: Expected `str` matching"),
    ],
)
def test_a_port_or_log_level_out_of_range_is_a_one_line_error(args, environ, complaint):
    done = subprocess.run(
        [sys.executable, "-m", "arc_actors", "serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **environ},
    )
    # Before: 99999 served on 34463, 70000 on 4464, -1 "Servname not supported", "verbose" a traceback.
    assert done.returncode == 2
    assert done.stderr.startswith(f"arc_actors: {complaint}")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line_before_any_agent_starts():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "arc_actors", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    # Before: "4 agents started" and "draining" lines, then the error.
    assert done.returncode == 1
    assert done.stderr == f"arc_actors: cannot listen on 127.0.0.1:{port}: Address already in use\n"
