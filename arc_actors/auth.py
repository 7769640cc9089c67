"""Who may call which agent: bearer tokens (static or JWT), ARC scopes per method, per-agent allow lists.

Off by default. When on, the gateway asks ``Authenticator.authenticate`` about every ``POST /arc``
request as soon as its envelope decodes, before the version check and before routing, so a caller
without a valid token learns nothing about the agents behind the endpoint. The answer is an
``Identity``, which the handler sees as ``context.auth``, or an ``AuthFailure`` the gateway
sends back as it is.

Tokens never reach a log line, an error message or a ``repr``: failures are logged with their kind and
the subject, when one is known.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from loguru import logger

from arc_actors.protocol import ErrorCode, ErrorObject, error

if TYPE_CHECKING:
    from arc_actors.protocol import ARCRequest

Algorithm = Literal["HS256", "RS256"]

DEFAULT_METHOD_SCOPES: Mapping[str, tuple[str, ...]] = {
    "chat.start": ("arc.chat.controller", "arc.agent.caller"),
    "chat.message": ("arc.chat.controller", "arc.agent.caller"),
    "chat.end": ("arc.chat.controller", "arc.agent.caller"),
    "task.create": ("arc.task.controller", "arc.agent.caller"),
    "task.send": ("arc.task.controller", "arc.agent.caller"),
    "task.info": ("arc.task.controller", "arc.agent.caller"),
    "task.get": ("arc.task.controller", "arc.agent.caller"),
    "task.cancel": ("arc.task.controller", "arc.agent.caller"),
    "task.subscribe": ("arc.task.controller", "arc.agent.caller"),
    "task.notification": ("arc.task.notify", "arc.agent.receiver"),
}
"""The scopes each ARC method requires, all of them, as the reference server requires them
(``task.get``, which the reference forgets, as its alias ``task.info``)."""

INSTALL_HINT = "pip install 'arc-actors[auth]'"


class StaticToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fixed bearer token, the subject it stands for and the scopes it grants."""

    token: str
    subject: str
    scopes: list[str] = []

    def __repr__(self) -> str:
        return f"StaticToken(subject={self.subject!r}, scopes={self.scopes!r}, token=<hidden>)"


class JWTConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How JWT bearer tokens are verified.

    ``secret`` verifies HS256, ``public_key`` (PEM text) RS256; ``algorithms`` defaults to those whose
    key is given. ``exp`` and the subject claim are always required; ``aud`` and ``iss`` are required and
    checked when ``audience`` / ``issuer`` are set. Scopes come from the first of ``scope_claims``
    present, as a space-separated string or a list."""

    secret: str | None = None
    public_key: str | None = None
    algorithms: list[Algorithm] | None = None
    audience: str | list[str] | None = None
    issuer: str | None = None
    leeway_s: float = 0.0
    subject_claim: str = "sub"
    scope_claims: list[str] = msgspec.field(default_factory=lambda: ["scope", "scp"])

    def __repr__(self) -> str:
        shown = ("algorithms", "audience", "issuer", "leeway_s", "subject_claim", "scope_claims")
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"JWTConfig({fields}, secret={'<hidden>' if self.secret else None})"


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Authentication and authorization of ``POST /arc``; nothing is checked unless ``enabled``.

    ``method_scopes`` is merged over ``DEFAULT_METHOD_SCOPES`` (a method mapped to ``[]`` needs no
    scope; a method in neither needs a valid token only). ``agent_allow`` maps an agent id to the only
    subjects that may call it; agents not listed take any authenticated caller. ``http_statuses``
    answers failures with HTTP 401/403; off, they come with the status of every other ARC error (200),
    which lets the reference ``arc.Client`` raise the precise error (it maps 401/403 to generic ones)."""

    enabled: bool = False
    tokens: list[StaticToken] = []
    jwt: JWTConfig | None = None
    method_scopes: dict[str, list[str]] = {}
    agent_allow: dict[str, list[str]] = {}
    http_statuses: bool = True


class Identity(msgspec.Struct, frozen=True):
    """The authenticated caller, as a handler sees it in ``context.auth``.

    ``claims`` are the verified JWT's claims (empty for a static token)."""

    subject: str
    scopes: frozenset[str]
    claims: dict[str, Any] = {}


class AuthFailure(msgspec.Struct, frozen=True):
    """A refused request: the ARC error to answer with, its HTTP status (None: the gateway's usual
    one) and the ``WWW-Authenticate`` header to send, if any."""

    error: ErrorObject
    http_status: int | None = None
    www_authenticate: str | None = None


_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)
_INVALID_TOKEN = 'Bearer error="invalid_token"'  # noqa: S105 - a WWW-Authenticate challenge, not a secret


class Authenticator:
    """Checks one request's ``Authorization`` header against an ``AuthConfig``.

    Built once per server; a bad configuration (no token source, a missing key, PyJWT not installed)
    is a ``ValueError`` or ``RuntimeError`` here, not a refusal of every request later."""

    def __init__(self, config: AuthConfig) -> None:
        if not config.tokens and config.jwt is None:
            raise ValueError("auth is enabled but has neither static tokens nor jwt: every request would be refused")
        for index, static in enumerate(config.tokens):
            if not static.token or not _BEARER.fullmatch(f"Bearer {static.token}"):
                raise ValueError(f"auth.tokens[{index}] ({static.subject!r}): a token is a non-empty RFC 6750 b64token")
        self._config = config
        self._static = [(_digest(static.token), static) for static in config.tokens]
        self._jwt = _JWTVerifier(config.jwt) if config.jwt is not None else None
        scopes = {**DEFAULT_METHOD_SCOPES, **config.method_scopes}
        self._method_scopes = {method: frozenset(required) for method, required in scopes.items()}
        self._agent_allow = {agent_id: frozenset(subjects) for agent_id, subjects in config.agent_allow.items()}

    def check_agents(self, agent_ids: Iterable[str]) -> None:
        """Refuse an allow list for an agent that does not exist: a misspelt id would leave the real one open."""
        unknown = sorted(set(self._agent_allow) - set(agent_ids))
        if unknown:
            raise ValueError(f"auth.agent_allow names agents this server does not have: {', '.join(unknown)}")

    def authenticate(self, authorization: str | None, request: ARCRequest | None = None) -> Identity | AuthFailure:
        """The caller's identity, or why it is refused. Without ``request`` only the token is checked;
        with one, also the method's scopes and the target agent's allow list."""
        outcome = self._identify(authorization)
        if isinstance(outcome, Identity) and request is not None:
            outcome = self._authorize(outcome, request)
        if isinstance(outcome, AuthFailure):
            agent_id, trace_id = (request.target_agent, request.trace_id) if request is not None else ("-", None)
            logger.bind(agent_id=agent_id, trace_id=trace_id or "-").info(
                "auth refused ({}): {}", outcome.error.code, outcome.error.message
            )
        return outcome

    def _identify(self, authorization: str | None) -> Identity | AuthFailure:
        if authorization is None:
            return self._unauthenticated(
                ErrorCode.AUTHENTICATION_FAILED, "Authentication required: send 'Authorization: Bearer <token>'"
            )
        match = _BEARER.fullmatch(authorization)
        if match is None:
            return self._unauthenticated(
                ErrorCode.AUTHENTICATION_FAILED,
                "Malformed Authorization header: expected 'Bearer <token>'",
                'Bearer error="invalid_request"',
            )
        token = match.group(1)
        static = self._static_token(token)  # a JWT-shaped token (a.b.c) that is not one goes to the JWT check
        if static is not None:
            return Identity(static.subject, frozenset(static.scopes))
        if self._jwt is None or token.count(".") != 2:
            return self._unauthenticated(ErrorCode.AUTHENTICATION_FAILED, "Unknown token", _INVALID_TOKEN)
        verified = self._jwt.verify(token)
        if isinstance(verified, Identity):
            return verified
        code, message = verified
        return self._unauthenticated(code, message, _INVALID_TOKEN)

    def _static_token(self, token: str) -> StaticToken | None:
        """The configured token equal to ``token``, compared in constant time against every one so the
        time taken tells nothing about which, or how much of one, matched."""
        digest = _digest(token)
        found = None
        for known, static in self._static:
            if hmac.compare_digest(digest, known):
                found = static
        return found

    def _authorize(self, identity: Identity, request: ARCRequest) -> Identity | AuthFailure:
        required = self._method_scopes.get(request.method, frozenset())
        missing = ", ".join(sorted(required - identity.scopes))
        if missing:
            return self._refused(
                error(
                    ErrorCode.INSUFFICIENT_SCOPE,
                    f"Insufficient scope for {request.method} ({identity.subject}): missing {missing}",
                    {
                        "method": request.method,
                        "required_scopes": sorted(required),
                        "provided_scopes": sorted(identity.scopes),
                    },
                ),
                f'Bearer error="insufficient_scope", scope="{" ".join(sorted(required))}"',
            )
        allowed = self._agent_allow.get(request.target_agent)
        if allowed is not None and identity.subject not in allowed:
            return self._refused(
                error(
                    ErrorCode.PERMISSION_DENIED,
                    f"Permission denied: {identity.subject} may not call {request.target_agent}",
                    {"agentId": request.target_agent},
                )
            )
        return identity

    def _unauthenticated(self, code: ErrorCode, message: str, challenge: str = "Bearer") -> AuthFailure:
        if not self._config.http_statuses:
            return AuthFailure(error(code, message))
        return AuthFailure(error(code, message), 401, challenge)

    def _refused(self, refusal: ErrorObject, challenge: str | None = None) -> AuthFailure:
        if not self._config.http_statuses:
            return AuthFailure(refusal)
        return AuthFailure(refusal, 403, challenge)


class _JWTVerifier:
    """Verifies JWTs with PyJWT; keys are parsed once, here, and each algorithm has its own key, so a
    token cannot pick the key it is checked with (no HS256-with-the-public-key confusion)."""

    def __init__(self, config: JWTConfig) -> None:
        try:
            import jwt
        except ImportError:
            raise RuntimeError(f"auth.jwt is configured but PyJWT is not installed: {INSTALL_HINT}") from None
        self._jwt = jwt
        self._config = config
        algorithms = config.algorithms or [
            name for name, key in (("HS256", config.secret), ("RS256", config.public_key)) if key
        ]
        if not algorithms:
            raise ValueError("auth.jwt needs a secret (HS256) or a public_key (RS256)")
        self._keys: dict[str, Any] = {name: self._prepare_key(name) for name in algorithms}
        required = ["exp", config.subject_claim]
        required += ["aud"] if config.audience is not None else []
        required += ["iss"] if config.issuer is not None else []
        self._options = {"require": required}
        self._failures: tuple[tuple[type[Exception], ErrorCode, str], ...] = (
            (jwt.ExpiredSignatureError, ErrorCode.TOKEN_EXPIRED, "Token expired"),
            (jwt.InvalidAudienceError, ErrorCode.TOKEN_INVALID, "Invalid token: audience not accepted"),
            (jwt.InvalidIssuerError, ErrorCode.TOKEN_INVALID, "Invalid token: issuer not accepted"),
            (jwt.ImmatureSignatureError, ErrorCode.TOKEN_INVALID, "Invalid token: not valid yet"),
            (jwt.InvalidSignatureError, ErrorCode.TOKEN_INVALID, "Invalid token: signature does not verify"),
            (jwt.InvalidAlgorithmError, ErrorCode.TOKEN_INVALID, "Invalid token: algorithm not accepted"),
            (jwt.DecodeError, ErrorCode.TOKEN_INVALID, "Invalid token: malformed"),
            (jwt.InvalidTokenError, ErrorCode.TOKEN_INVALID, "Invalid token"),
        )

    def _prepare_key(self, algorithm: str) -> Any:
        jwt, config = self._jwt, self._config
        if algorithm == "HS256":
            if not config.secret:
                raise ValueError("auth.jwt: HS256 needs a secret")
            return jwt.get_algorithm_by_name(algorithm).prepare_key(config.secret)
        if not config.public_key:
            raise ValueError("auth.jwt: RS256 needs a public_key (PEM text)")
        if not jwt.algorithms.has_crypto:
            raise RuntimeError(f"auth.jwt: RS256 needs the cryptography package: {INSTALL_HINT}")
        try:
            return jwt.get_algorithm_by_name(algorithm).prepare_key(config.public_key)
        except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
            raise ValueError(f"auth.jwt.public_key is not a PEM RSA public key: {type(exc).__name__}") from None

    def verify(self, token: str) -> Identity | tuple[ErrorCode, str]:
        """The token's identity, or the error code and message of why it is not accepted."""
        jwt, config = self._jwt, self._config
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
            if key is None:
                raise jwt.InvalidAlgorithmError
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options=self._options,
            )
        except jwt.InvalidTokenError as exc:
            return next((code, message) for kind, code, message in self._failures if isinstance(exc, kind))
        return _identity(claims, config)


def _identity(claims: dict[str, Any], config: JWTConfig) -> Identity | tuple[ErrorCode, str]:
    """The identity verified claims stand for, once the types PyJWT does not check are right: a string
    subject, and scopes from the first scope claim present, as ``"a b"`` or ``["a", "b"]``."""
    subject = claims[config.subject_claim]
    if not isinstance(subject, str):
        return ErrorCode.TOKEN_INVALID, f"Invalid token: {config.subject_claim!r} is not a string"
    for name in config.scope_claims:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return Identity(subject, frozenset(value.split()), claims)
        if isinstance(value, list) and all(isinstance(scope, str) for scope in value):
            return Identity(subject, frozenset(value), claims)
        return ErrorCode.TOKEN_INVALID, f"Invalid token: {name!r} is neither a string nor a list of strings"
    return Identity(subject, frozenset(), claims)


def _digest(token: str) -> bytes:
    """A fixed-length stand-in for a token, so comparisons take the same time whatever its length."""
    return hashlib.sha256(token.encode()).digest()
