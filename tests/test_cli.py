"""``python -m arc_actors serve`` as a user runs it: a real process, real signals."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request

import pytest
from conftest import arc_post, envelope, free_port, start, wait_healthy

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
