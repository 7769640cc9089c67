"""Auth, off by default: bearer tokens (static and JWT), ARC scopes per method, per-agent allow lists.

Every case runs against a real server with real HTTP clients, the reference ``arc.Client`` included."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import envelope, run

from arc_actors import ARCError, AuthConfig, Client, Identity, JWTConfig, Server, StaticToken
from arc_actors.testing import serving

jwt = pytest.importorskip("jwt", reason="PyJWT is a test dependency: pip install '.[test]'")
arc = pytest.importorskip("arc", reason="arc-sdk is a test dependency: pip install '.[test]'")

SECRET = "test-secret-of-at-least-thirty-two-bytes!"
AUDIENCE = "arc-actors-tests"
ISSUER = "https://issuer.test"
CHAT_SCOPES = "arc.chat.controller arc.agent.caller"
STATIC_TOKEN = "static-token-Zq9xWv3"
NO_SCOPE_TOKEN = "no-scope-token-Kp2mR7"
UNKNOWN_TOKEN = "unknown-token-Hd8sL4"

AUTH = AuthConfig(
    enabled=True,
    tokens=[
        StaticToken(STATIC_TOKEN, "static-caller", ["arc.chat.controller", "arc.agent.caller"]),
        StaticToken(NO_SCOPE_TOKEN, "scopeless-caller"),
    ],
    jwt=JWTConfig(secret=SECRET, audience=AUDIENCE, issuer=ISSUER),
    agent_allow={"vault-agent": ["alice"]},
)


def token(
    subject: str = "alice", scope: Any = CHAT_SCOPES, key: str = SECRET, expires_in: float = 3600, **claims: Any
) -> str:
    """A JWT for the test server: signed with its secret, for its audience and issuer, unless overridden."""
    payload = {"sub": subject, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time() + expires_in), "scope": scope}
    payload.update(claims)
    return jwt.encode({name: value for name, value in payload.items() if value is not None}, key, algorithm="HS256")


def b64json(value: Any) -> str:
    """One segment of a hand-made JWT."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def say(text: str = "hi") -> dict:
    return {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": text}]}}


def auth_server(auth: AuthConfig | None = AUTH) -> Server:
    """echo-agent answers with what its context knows of the caller; vault-agent is allow-listed."""
    server = Server(server_id="auth-server", auth=auth)

    async def whoami(params: dict, context: Any) -> dict:
        identity = context.auth
        if identity is None:
            return {"auth": None}
        assert context["auth"] is identity
        return {"subject": identity.subject, "scopes": sorted(identity.scopes), "claims": identity.claims}

    for method in ("chat.start", "test.echo"):
        server.agent_handler("echo-agent", method)(whoami)
        server.agent_handler("vault-agent", method)(whoami)
    return server


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(auth_server()) as running:
        yield running.url


async def send(
    url: str, body: bytes | dict, headers: dict[str, str] | None = None, http_method: str = "POST"
) -> tuple[int, dict[str, str], dict]:
    """One HTTP request; its status, headers and decoded JSON body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.request(http_method, url, data=data, headers=headers or {}) as reply,
    ):
        return reply.status, dict(reply.headers), json.loads(await reply.read())


def chat(target_agent: str = "echo-agent") -> dict:
    return envelope(target_agent, "chat.start", say())


MATRIX = [
    ("no token", {}, chat(), 401, -44001),
    ("not a bearer header", {"Authorization": "Basic YWxpY2U6cHc="}, chat(), 401, -44001),
    ("bearer without a token", {"Authorization": "Bearer "}, chat(), 401, -44001),
    ("unknown static token", bearer(UNKNOWN_TOKEN), chat(), 401, -44001),
    ("jwt-shaped garbage", bearer("abc.def.ghi"), chat(), 401, -44005),
    ("expired jwt", bearer(token(expires_in=-60)), chat(), 401, -44004),
    ("jwt for another audience", bearer(token(aud="someone-else")), chat(), 401, -44005),
    ("jwt from another issuer", bearer(token(iss="https://evil.test")), chat(), 401, -44005),
    ("jwt with a bad signature", bearer(token(key="another-secret-of-at-least-32-bytes")), chat(), 401, -44005),
    ("jwt without exp", bearer(token(exp=None)), chat(), 401, -44005),
    ("jwt without sub", bearer(token(subject=None)), chat(), 401, -44005),
    ("jwt with a non-string scope", bearer(token(scope=7)), chat(), 401, -44005),
    (
        "jwt whose alg is a list",
        bearer(f"{b64json({'alg': ['HS256']})}.{b64json({'sub': 'x'})}.AAAA"),
        chat(),
        401,
        -44005,
    ),
    ("unsigned jwt (alg none)", bearer(jwt.encode({"sub": "alice"}, None, algorithm="none")), chat(), 401, -44005),
    ("jwt missing a scope", bearer(token(scope="arc.chat.controller")), chat(), 403, -44003),
    ("jwt with task scopes only", bearer(token(scope="arc.task.controller arc.agent.caller")), chat(), 403, -44003),
    ("static token without scopes", bearer(NO_SCOPE_TOKEN), chat(), 403, -44003),
    ("jwt not on the agent's allow list", bearer(token(subject="bob")), chat("vault-agent"), 403, -44006),
    ("static token not on the allow list", bearer(STATIC_TOKEN), chat("vault-agent"), 403, -44006),
    ("jwt with the right scopes", bearer(token()), chat(), 200, "alice"),
    ("jwt with scopes as a list (scp)", bearer(token(scope=None, scp=CHAT_SCOPES.split())), chat(), 200, "alice"),
    ("static token with the right scopes", bearer(STATIC_TOKEN), chat(), 200, "static-caller"),
    ("jwt on the agent's allow list", bearer(token(subject="alice")), chat("vault-agent"), 200, "alice"),
    ("a method needing no scope", bearer(NO_SCOPE_TOKEN), envelope("echo-agent", "test.echo"), 200, "scopeless-caller"),
    ("lowercase scheme", {"Authorization": f"bearer {STATIC_TOKEN}"}, chat(), 200, "static-caller"),
]


@pytest.mark.parametrize(("case", "headers", "request_body", "status", "expected"), MATRIX, ids=[c[0] for c in MATRIX])
def test_auth_matrix_answers_its_exact_status_and_code(url, case, headers, request_body, status, expected):
    """``expected`` is the ARC error code of a refusal, the subject the handler sees otherwise."""
    got_status, got_headers, answer = run(send(url, request_body, headers))
    assert answer["id"] == request_body["id"]
    if status == 200:
        assert (got_status, answer["error"], answer["result"]["subject"]) == (200, None, expected), answer
        return
    assert (got_status, answer["result"], answer["error"]["code"]) == (status, None, expected), answer
    assert isinstance(answer["error"]["details"], dict)
    assert answer["responseAgent"] == "auth-server", "a refusal names the server, never the agent"
    assert ("WWW-Authenticate" in got_headers) == (status == 401 or expected == -44003)


def test_unknown_static_token_without_jwt_configured_is_authentication_failed():
    auth = AuthConfig(enabled=True, tokens=[StaticToken(STATIC_TOKEN, "static-caller", CHAT_SCOPES.split())])
    with serving(auth_server(auth)) as running:
        status, headers, answer = run(send(running.url, chat(), bearer(UNKNOWN_TOKEN)))
        good_status, _, good = run(send(running.url, chat(), bearer(STATIC_TOKEN)))
    assert (status, answer["error"]["code"], headers["WWW-Authenticate"]) == (
        401,
        -44001,
        'Bearer error="invalid_token"',
    )
    assert (good_status, good["result"]["subject"]) == (200, "static-caller")


def test_missing_scope_names_the_required_and_provided_scopes(url):
    status, headers, answer = run(send(url, chat(), bearer(token(scope="arc.chat.controller extra.scope"))))
    assert status == 403
    assert answer["error"]["details"] == {
        "method": "chat.start",
        "required_scopes": ["arc.agent.caller", "arc.chat.controller"],
        "provided_scopes": ["arc.chat.controller", "extra.scope"],
    }
    assert (
        headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="arc.agent.caller arc.chat.controller"'
    )


def test_no_token_gets_a_bare_bearer_challenge(url):
    status, headers, answer = run(send(url, chat()))
    assert (status, headers["WWW-Authenticate"], answer["error"]["details"]) == (401, "Bearer", {})


def test_unauthenticated_caller_learns_nothing_about_agents_or_versions(url):
    unknown_agent = run(send(url, envelope("nobody", "chat.start", say())))
    wrong_version = run(send(url, envelope(arc="2.0")))
    for status, _, answer in (unknown_agent, wrong_version):
        assert (status, answer["error"]["code"]) == (401, -44001)
        assert "nobody" not in json.dumps(answer)


def test_parse_errors_still_come_before_authentication(url):
    not_json = run(send(url, b"{not json"))
    not_an_envelope = run(send(url, b"[]"))
    assert [(status, answer["error"]["code"]) for status, _, answer in (not_json, not_an_envelope)] == [
        (200, -32700),
        (200, -32600),
    ]


def test_authenticated_caller_gets_routing_errors_as_usual(url):
    _, _, unknown_agent = run(send(url, envelope("nobody", "test.echo"), bearer(token())))
    _, _, unknown_method = run(send(url, envelope("echo-agent", "x.unknown"), bearer(token())))
    assert (unknown_agent["error"]["code"], unknown_method["error"]["code"]) == (-41001, -32601)
    assert unknown_agent["error"]["details"]["availableAgents"] == ["echo-agent", "vault-agent"]


def test_handler_sees_the_callers_identity(url):
    _, _, from_jwt = run(send(url, chat(), bearer(token(subject="alice", tenant="acme"))))
    _, _, from_static = run(send(url, chat(), bearer(STATIC_TOKEN)))
    assert from_jwt["result"]["subject"] == "alice"
    assert from_jwt["result"]["scopes"] == ["arc.agent.caller", "arc.chat.controller"]
    assert from_jwt["result"]["claims"]["tenant"] == "acme"
    assert from_jwt["result"]["claims"]["aud"] == AUDIENCE
    assert from_static["result"] == {
        "subject": "static-caller",
        "scopes": ["arc.agent.caller", "arc.chat.controller"],
        "claims": {},
    }


def test_with_auth_off_no_token_is_needed_and_context_auth_is_none():
    for auth in (None, AuthConfig()):
        with serving(auth_server(auth)) as running:
            status, _, answer = run(send(running.url, chat()))
            health = run(Client(running.url).health())
        assert (status, answer["result"]) == (200, {"auth": None})
        assert sorted(health["agents"]) == ["echo-agent", "vault-agent"]


def test_health_is_open_and_lists_agents_only_to_a_valid_token(url):
    base = url.removesuffix("/arc")
    anonymous = run(send(f"{base}/health", b"", http_method="GET"))
    bad_token = run(send(f"{base}/health", b"", bearer(UNKNOWN_TOKEN), http_method="GET"))
    good_token = run(send(f"{base}/health", b"", bearer(token()), http_method="GET"))
    for status, _, health in (anonymous, bad_token):
        assert (status, health["status"], "agents" in health) == (200, "healthy", False)
    assert good_token[0] == 200
    assert sorted(good_token[2]["agents"]) == ["echo-agent", "vault-agent"]


def test_agent_info_needs_a_valid_token(url):
    info_url = url.removesuffix("/arc") + "/agent-info"
    anonymous = run(send(info_url, b"", http_method="GET"))
    with_token = run(send(info_url, b"", bearer(NO_SCOPE_TOKEN), http_method="GET"))
    assert (anonymous[0], anonymous[2]["error"]["code"]) == (401, -44001)
    assert (with_token[0], with_token[2]["totalAgents"]) == (200, 2)


def test_metrics_need_a_valid_token(url):
    metrics_url = url.removesuffix("/arc") + "/metrics"

    async def scrape(headers: dict[str, str]) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.get(metrics_url, headers=headers) as reply:
            return reply.status, await reply.read()

    anonymous, bad_token = run(scrape({})), run(scrape(bearer(UNKNOWN_TOKEN)))
    with_token = run(scrape(bearer(NO_SCOPE_TOKEN)))
    # Before: 17 KB naming every agent, method and its traffic, to anyone.
    for status, body in (anonymous, bad_token):
        assert (status, json.loads(body)["error"]["code"]) == (401, -44001)
        assert b"echo-agent" not in body
    assert with_token[0] == 200 and b"arc_requests" in with_token[1]


def test_our_client_sends_its_token_and_reads_the_auth_error():
    async def calls(url: str) -> tuple[Any, ARCError]:
        async with Client(url, token=token()) as good:
            answered = await good.chat.start("echo-agent", say()["initialMessage"])
        async with Client(url, token=token(scope="arc.agent.caller")) as narrow:
            try:
                await narrow.chat.start("echo-agent", say()["initialMessage"])
            except ARCError as exc:
                return answered, exc
        raise AssertionError("a token without arc.chat.controller was let through")

    with serving(auth_server()) as running:
        answered, refused = run(calls(running.url))
    assert answered.result["subject"] == "alice"
    assert (refused.code, refused.details["required_scopes"]) == (-44003, ["arc.agent.caller", "arc.chat.controller"])


def rsa_keys() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


def hs256_by_hand(claims: dict, key: bytes) -> str:
    """An HS256 JWT made without PyJWT, which refuses to use a PEM key as an HMAC secret."""

    signing_input = b64json({"alg": "HS256", "typ": "JWT"}) + "." + b64json(claims)
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def test_rs256_accepts_the_key_holders_token_and_refuses_the_public_key_as_an_hmac_secret():
    pytest.importorskip("cryptography")
    private, public_pem = rsa_keys()
    claims = {"sub": "rs-caller", "exp": int(time.time()) + 300, "scope": CHAT_SCOPES}
    signed = jwt.encode(claims, private, algorithm="RS256")
    forged = hs256_by_hand(claims, public_pem.encode())
    auth = AuthConfig(enabled=True, jwt=JWTConfig(public_key=public_pem))
    with serving(auth_server(auth)) as running:
        good = run(send(running.url, chat(), bearer(signed)))
        bad = run(send(running.url, chat(), bearer(forged)))
    assert (good[0], good[2]["result"]["subject"]) == (200, "rs-caller")
    assert (bad[0], bad[2]["error"]["code"], bad[2]["error"]["message"]) == (
        401,
        -44005,
        "Invalid token: algorithm not accepted",
    )


def test_leeway_accepts_a_token_expired_within_it():
    auth = AuthConfig(enabled=True, jwt=JWTConfig(secret=SECRET, leeway_s=120))
    just_expired = jwt.encode(
        {"sub": "late", "exp": int(time.time()) - 30, "scope": CHAT_SCOPES}, SECRET, algorithm="HS256"
    )
    with serving(auth_server(auth)) as running:
        status, _, answer = run(send(running.url, chat(), bearer(just_expired)))
    assert (status, answer["result"]["subject"]) == (200, "late")


def test_method_scopes_extend_and_override_the_arc_defaults():
    auth = AuthConfig(
        enabled=True,
        tokens=[StaticToken(STATIC_TOKEN, "reader", ["reports.read"])],
        method_scopes={"test.echo": ["reports.read"], "chat.start": []},
    )
    with serving(auth_server(auth)) as running:
        echo = run(send(running.url, envelope("echo-agent", "test.echo"), bearer(STATIC_TOKEN)))
        started = run(send(running.url, chat(), bearer(STATIC_TOKEN)))
    assert (echo[0], echo[2]["result"]["scopes"]) == (200, ["reports.read"])
    assert (started[0], started[2]["result"]["subject"]) == (200, "reader")


def test_task_get_needs_the_same_scopes_as_task_info():
    server = Server(server_id="tasks", auth=AuthConfig(enabled=True, tokens=[StaticToken(STATIC_TOKEN, "c", [])]))
    server.agent_handler("task-agent", "task.get")(lambda params, context: {"task": params["taskId"]})
    with serving(server) as running:
        status, _, answer = run(
            send(running.url, envelope("task-agent", "task.get", {"taskId": "t1"}), bearer(STATIC_TOKEN))
        )
    assert (status, answer["error"]["details"]["required_scopes"]) == (403, ["arc.agent.caller", "arc.task.controller"])


def test_http_statuses_off_answers_auth_errors_with_200_and_the_precise_code():
    auth = msgspec.structs.replace(AUTH, http_statuses=False)
    with serving(auth_server(auth)) as running:
        expired = run(send(running.url, chat(), bearer(token(expires_in=-60))))
        narrow = run(send(running.url, chat(), bearer(NO_SCOPE_TOKEN)))
    assert [
        (status, "WWW-Authenticate" in headers, answer["error"]["code"])
        for status, headers, answer in (expired, narrow)
    ] == [
        (200, False, -44004),
        (200, False, -44003),
    ]


def reference_chat(url: str, bearer_token: str) -> dict:
    async def call() -> dict:
        async with arc.Client(url, token=bearer_token, use_quantum_safe=False) as client:
            return await client.chat.start(target_agent="echo-agent", initial_message=say()["initialMessage"])

    return run(call())


def test_reference_client_is_refused_a_bad_token_and_served_with_a_good_one(url):
    with pytest.raises(arc.exceptions.AuthenticationError):
        reference_chat(url, UNKNOWN_TOKEN)
    with pytest.raises(arc.exceptions.AuthenticationError):
        reference_chat(url, token(expires_in=-60))
    assert reference_chat(url, token())["result"]["subject"] == "alice"
    assert reference_chat(url, STATIC_TOKEN)["result"]["subject"] == "static-caller"


def test_reference_client_gets_the_precise_errors_when_http_statuses_are_off():
    with serving(auth_server(msgspec.structs.replace(AUTH, http_statuses=False))) as running:
        with pytest.raises(arc.exceptions.InsufficientScopeError) as narrow:
            reference_chat(running.url, token(scope="arc.chat.controller"))
        with pytest.raises(arc.exceptions.TokenExpiredError):
            reference_chat(running.url, token(expires_in=-60))
    assert narrow.value.details["required_scopes"] == ["arc.agent.caller", "arc.chat.controller"]
    assert narrow.value.details["provided_scopes"] == ["arc.chat.controller"]


def test_no_token_text_appears_in_the_logs():
    from loguru import logger

    tokens = [STATIC_TOKEN, NO_SCOPE_TOKEN, UNKNOWN_TOKEN, token(), token(expires_in=-60), token(aud="x")]
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message} {extra} {exception}")
    try:
        with serving(auth_server()) as running:
            answers = [run(send(running.url, chat(), bearer(value))) for value in tokens]
            answers.append(run(send(running.url, chat("vault-agent"), bearer(STATIC_TOKEN))))
    finally:
        logger.remove(sink)
    assert [status for status, _, _ in answers] == [200, 403, 401, 200, 401, 401, 403]
    refusals = [line for line in lines if "auth refused" in line]
    assert len(refusals) == 5
    assert any("scopeless-caller" in line for line in refusals), "a refusal names its subject"
    text = "\n".join(lines)
    for value in tokens:
        for piece in (value, *value.split(".")):
            assert piece not in text


def test_config_structs_reject_unknown_keys_and_never_show_secrets():
    with pytest.raises(msgspec.ValidationError, match=r"unknown field `scope` - at `\$.tokens\[0\]`"):
        msgspec.convert({"enabled": True, "tokens": [{"token": "t", "subject": "s", "scope": []}]}, AuthConfig)
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'ES256' - at `\$.jwt.algorithms\[0\]`"):
        msgspec.convert({"jwt": {"algorithms": ["ES256"]}}, AuthConfig)
    config = msgspec.convert(
        {"enabled": True, "tokens": [{"token": STATIC_TOKEN, "subject": "s"}], "jwt": {"secret": SECRET}}, AuthConfig
    )
    assert STATIC_TOKEN not in repr(config)
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("auth", "error", "message"),
    [
        (AuthConfig(enabled=True), ValueError, "neither static tokens nor jwt"),
        (AuthConfig(enabled=True, tokens=[StaticToken("", "s")]), ValueError, r"auth.tokens\[0\]"),
        (AuthConfig(enabled=True, tokens=[StaticToken("has space", "s")]), ValueError, r"auth.tokens\[0\]"),
        (AuthConfig(enabled=True, jwt=JWTConfig()), ValueError, "needs a secret"),
        (
            AuthConfig(enabled=True, jwt=JWTConfig(algorithms=["RS256"], secret=SECRET)),
            ValueError,
            "needs a public_key",
        ),
        (AuthConfig(enabled=True, jwt=JWTConfig(public_key="not a pem")), ValueError, "not a PEM RSA public key"),
    ],
    ids=["no token source", "empty token", "token with a space", "no jwt key", "rs256 without key", "bad pem"],
)
def test_bad_auth_config_is_an_error_when_the_server_is_made(auth, error, message):
    with pytest.raises(error, match=message):
        Server(auth=auth)


def test_allow_list_for_an_unknown_agent_is_an_error_when_the_app_is_made():
    server = auth_server(msgspec.structs.replace(AUTH, agent_allow={"vualt-agent": ["alice"]}))
    with pytest.raises(ValueError, match="agents this server does not have: vualt-agent"):
        server.create_app()


def test_jwt_config_without_pyjwt_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(RuntimeError, match=r"PyJWT is not installed: pip install 'arc-actors\[auth\]'"):
        Server(auth=AuthConfig(enabled=True, jwt=JWTConfig(secret=SECRET)))
    static_only = Server(auth=AuthConfig(enabled=True, tokens=[StaticToken(STATIC_TOKEN, "s")]))
    assert static_only.server_id == "arc-server"


def test_identity_is_a_plain_value():
    identity = Identity("alice", frozenset({"a"}))
    assert (identity.subject, identity.scopes, identity.claims) == ("alice", frozenset({"a"}), {})


def test_a_failing_authenticator_fails_closed_with_an_internal_error(monkeypatch):
    from arc_actors.auth import Authenticator

    def broken(self, authorization, request=None):
        raise RuntimeError("bug in auth")

    monkeypatch.setattr(Authenticator, "authenticate", broken)
    with serving(auth_server()) as running:
        status, _, answer = run(send(running.url, chat(), bearer(STATIC_TOKEN)))
    assert (status, answer["result"], answer["error"]["code"]) == (200, None, -32603)
    assert set(answer["error"]["details"]) == {"errorId"}
