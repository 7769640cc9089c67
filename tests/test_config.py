"""Settings from a TOML file, ARC_* environment variables and flags, in rising precedence."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest
from conftest import envelope, free_port, post, run, start, wait_healthy

from arc_actors import Agent, Server, handles
from arc_actors.config import ConfigError, ServerSettings, Settings, load_settings
from arc_actors.testing import serving

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


class Dawdler(Agent):
    agent_id = "dawdler"

    @handles("work.run")
    def work(self, params, context):
        time.sleep(1.0)
        return {"done": True}


def test_file_settings_reach_the_server_and_its_agents(tmp_path):
    config = tmp_path / "arc_actors.toml"
    config.write_text(
        """
        [server]
        mailbox_size = 50
        drain_timeout_s = 0.5

        [server.restart_policy]
        max_restarts = 2

        [agents.dawdler]
        request_timeout_s = 0.2
        """
    )
    server = Server(server_id="configured")
    server.add_agent(Dawdler)
    server.configure(load_settings(config, environ={}))
    assert (server.mailbox_size, server.drain_timeout_s, server.restart_policy.max_restarts) == (50, 0.5, 2)
    with serving(server) as running:
        answer = run(post(running.url, envelope("dawdler", "work.run")))
    assert answer["error"]["code"] == -41006
    assert answer["error"]["details"]["requestTimeoutS"] == 0.2


def test_environment_overrides_the_file_and_flags_override_both(tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text("[server]\nport = 1\nmailbox_size = 10\nlog_level = 'WARNING'\n")
    settings = load_settings(config, environ={"ARC_MAILBOX_SIZE": "20", "ARC_PORT": "2"}, overrides={"port": 3})
    assert (settings.server.mailbox_size, settings.server.port, settings.server.log_level) == (20, 3, "WARNING")


def test_serve_reads_the_config_file_and_the_environment(tmp_path):
    port = free_port()
    config = tmp_path / "arc_actors.toml"
    config.write_text("[server]\nport = 9\nreference_statuses = true\n")
    process = start("serve", "--config", str(config), env={"ARC_PORT": str(port)})
    try:
        wait_healthy(port, process)
        body = json.dumps(envelope("ghost-agent", "chat.start")).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/arc", data=body, timeout=5)
        assert refused.value.code == 404
        assert json.loads(refused.value.read())["error"]["code"] == -41001
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("config_text", "env", "complaint"),
    [
        ("[server]\nmailbox_sise = 3\n", {}, "unknown field `mailbox_sise` - at `$.server`"),
        ("[server]\nport = 'eighty'\n", {}, "Expected `int`, got `str` - at `$.server.port`"),
        ("[server.restart_policy]\nmax_restarts = -1\n", {}, "max_restarts must be >= 0"),
        ("[server]\nmailbox_size = 0\n", {}, "mailbox_size must be >= 1"),
        ("[agents.payroll-agent]\nconcurrency = 2\n", {}, "does not declare: payroll-agent"),
        ("[agents.finance-agent]\nconcurrency = 0\n", {}, "concurrency must be an int >= 1"),
        ("", {"ARC_MAILBOX_SIZE": "lots"}, "environment variable ARC_MAILBOX_SIZE: Expected `int`"),
        ("[server\n", {}, "config file"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_what_is_wrong(tmp_path, config_text, env, complaint):
    config = tmp_path / "bad.toml"
    config.write_text(config_text)
    process = start("serve", "--config", str(config), "--port", str(free_port()), env=env)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert complaint in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"cannot read config file 'nowhere\.toml'"):
        load_settings("nowhere.toml", environ={})


def test_every_setting_is_in_the_configuration_reference():
    reference = DOCS.read_text()
    for name in ServerSettings.__struct_fields__:
        assert f"`{name}`" in reference, name
        if name != "restart_policy":
            assert f"`ARC_{name.upper()}`" in reference, name
    for name in msgspec.structs.fields(Settings):
        assert f"[{name.name}" in reference
    for name in (
        "concurrency",
        "mailbox_size",
        "request_timeout_s",
        "max_restarts",
        "hang_after_s",
        "ARC_HANG_AFTER_S",
    ):
        assert name in reference


def test_no_config_file_and_no_environment_leaves_the_code_s_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = Server(server_id="plain", mailbox_size=7)
    server.agent_handler("a", "work.run")(lambda params, context: 1)
    server.configure(load_settings(environ={}))
    assert server.mailbox_size == 7


def test_the_reference_example_configures_the_demo_server(tmp_path):
    import re

    from arc_actors.demo import build_server

    example = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S).group(1)
    config = tmp_path / "example.toml"
    config.write_text(example)
    server = build_server()
    server.configure(load_settings(config, environ={}))
    assert server.mailbox_size == 1000
    assert server.restart_policy.hang_after_s == 120


def test_auth_is_configured_from_the_file(tmp_path):
    config = tmp_path / "auth.toml"
    config.write_text(
        """
        [auth]
        enabled = true

        [[auth.tokens]]
        token = "s3cret-token"
        subject = "ops"
        scopes = ["arc.agent.caller", "arc.chat.controller"]
        """
    )
    server = Server(server_id="auth-config")
    server.agent_handler("a", "work.run")(lambda params, context: context.auth.subject)
    server.configure(load_settings(config, environ={}))
    with serving(server) as running:
        import aiohttp

        async def calls() -> tuple[int, dict]:
            async with aiohttp.ClientSession() as session:
                async with session.post(running.url, json=envelope("a", "work.run")) as refused:
                    status = refused.status
                headers = {"Authorization": "Bearer s3cret-token"}
                async with session.post(running.url, json=envelope("a", "work.run"), headers=headers) as allowed:
                    return status, await allowed.json(content_type=None)

        status, answer = run(calls())
    assert status == 401
    assert answer["result"] == "ops"


def test_bad_auth_config_is_a_config_error(tmp_path):
    config = tmp_path / "auth.toml"
    config.write_text("[auth]\nenabled = true\n")
    server = Server(server_id="auth-bad")
    server.agent_handler("a", "work.run")(lambda params, context: 1)
    with pytest.raises(ConfigError, match=r"\[auth\]: auth is enabled but has neither static tokens nor jwt"):
        server.configure(load_settings(config, environ={}))


def test_every_server_setting_reaches_the_server():
    values = {
        "max_body_bytes": 1000,
        "max_params_bytes": 500,
        "max_params_depth": 5,
        "max_header_bytes": 4000,
        "reference_statuses": True,
        "mailbox_size": 9,
        "request_timeout_s": 2.5,
        "drain_timeout_s": 1.5,
        "metrics": False,
        "stream_keepalive_s": 0.5,
    }
    server = Server(server_id="all-settings")
    server.agent_handler("a", "work.run")(lambda params, context: 1)
    server.configure(load_settings(environ={f"ARC_{name.upper()}": str(value) for name, value in values.items()}))
    for name, value in values.items():
        holder = server if hasattr(server, name) else server._config
        assert getattr(holder, name) == value, name


def test_webhook_settings_reach_the_server_from_the_file_and_the_environment(tmp_path):
    config = tmp_path / "arc.toml"
    config.write_text('[server]\nwebhook_allow = ["hooks.example.com"]\nwebhook_max_retries = 2\nwebhook_workers = 3\n')
    environ = {
        "ARC_WEBHOOK_SECRET": "s",
        "ARC_WEBHOOK_ALLOW": "10.0.0.0/8, *.example.com",
        "ARC_WEBHOOK_TIMEOUT_S": "2",
    }
    server = Server(server_id="hooks")
    server.agent_handler("a", "work.run")(lambda params, context: 1)
    server.configure(load_settings(config, environ=environ))
    hooks = server.webhooks
    assert (hooks.secret, hooks.allow, hooks.timeout_s) == ("s", ("10.0.0.0/8", "*.example.com"), 2.0)
    assert (hooks.max_retries, hooks.workers, hooks.queue_size) == (2, 3, 1000)
    with pytest.raises(ConfigError, match="webhook allow list: 'not a host!' is not"):
        server.configure(load_settings(environ={"ARC_WEBHOOK_ALLOW": "not a host!"}))
    with pytest.raises(ConfigError, match="webhook workers must be >= 1, got 0"):
        server.configure(load_settings(environ={"ARC_WEBHOOK_WORKERS": "0"}))
