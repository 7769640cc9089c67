"""Settings from a TOML file, ``ARC_*`` environment variables and command-line flags, in that rising
order of precedence, over what the code passed to ``Server(...)``.

The file is decoded by msgspec into the Structs below, so a wrong key or type is refused with its path
(``Object contains unknown field `mailbox_sise` - at `$.server```). Every field is optional: only what a
source sets is applied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_type_hints

import msgspec

from arc_actors.auth import AuthConfig
from arc_actors.supervisor import RestartPolicy

DEFAULT_CONFIG_FILE = "arc_actors.toml"
ENV_PREFIX = "ARC_"

UNSET: Any = msgspec.UNSET


class ConfigError(Exception):
    """A configuration source says something that cannot be applied; the message says where."""


class AgentSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[agents.AGENT_ID]``: overrides of one agent's own options."""

    concurrency: int | msgspec.UnsetType = UNSET
    mailbox_size: int | msgspec.UnsetType = UNSET
    request_timeout_s: float | msgspec.UnsetType = UNSET
    restart_policy: RestartPolicy | msgspec.UnsetType = UNSET
    managed_chats: bool | msgspec.UnsetType = UNSET
    max_in_flight: int | msgspec.UnsetType = UNSET


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A TCP port (0: any free one): the system would take 99999 modulo 65536, silently."""
LogLevel = Annotated[str, msgspec.Meta(pattern="(?i)^(trace|debug|info|success|warning|error|critical)$")]
"""A loguru level name, in any case."""


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[server]``: how the process serves; each field also reads ``ARC_<FIELD>`` from the environment."""

    host: str | msgspec.UnsetType = UNSET
    port: Port | msgspec.UnsetType = UNSET
    log_level: LogLevel | msgspec.UnsetType = UNSET
    log_json: bool | msgspec.UnsetType = UNSET
    max_body_bytes: int | msgspec.UnsetType = UNSET
    max_params_depth: int | msgspec.UnsetType = UNSET
    max_params_containers: int | msgspec.UnsetType = UNSET
    max_params_bytes: int | msgspec.UnsetType = UNSET
    max_header_bytes: int | msgspec.UnsetType = UNSET
    body_timeout_s: float | msgspec.UnsetType = UNSET
    reference_statuses: bool | msgspec.UnsetType = UNSET
    mailbox_size: int | msgspec.UnsetType = UNSET
    request_timeout_s: float | msgspec.UnsetType = UNSET
    drain_timeout_s: float | msgspec.UnsetType = UNSET
    metrics: bool | msgspec.UnsetType = UNSET
    stream_keepalive_s: float | msgspec.UnsetType = UNSET
    state_path: str | msgspec.UnsetType = UNSET
    state_max_records: int | msgspec.UnsetType = UNSET
    engine: str | msgspec.UnsetType = UNSET
    ray_address: str | msgspec.UnsetType = UNSET
    ray_namespace: str | msgspec.UnsetType = UNSET
    webhook_secret: str | msgspec.UnsetType = UNSET
    webhook_allow: list[str] | msgspec.UnsetType = UNSET
    webhook_timeout_s: float | msgspec.UnsetType = UNSET
    webhook_max_retries: int | msgspec.UnsetType = UNSET
    webhook_backoff_initial_s: float | msgspec.UnsetType = UNSET
    webhook_backoff_max_s: float | msgspec.UnsetType = UNSET
    webhook_queue_size: int | msgspec.UnsetType = UNSET
    webhook_workers: int | msgspec.UnsetType = UNSET
    restart_policy: RestartPolicy | msgspec.UnsetType = UNSET


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A whole configuration file."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    agents: dict[str, AgentSettings] = msgspec.field(default_factory=dict)
    auth: AuthConfig | msgspec.UnsetType = UNSET


ENV_FIELDS = tuple(name for name in ServerSettings.__struct_fields__ if name != "restart_policy")
"""The ``[server]`` fields that ``ARC_<FIELD>`` sets (the policy's hang threshold has ``ARC_HANG_AFTER_S``)."""


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from ``path`` (or ``arc_actors.toml`` in the working directory when it exists), then
    ``ARC_*`` variables of ``environ``, then ``overrides`` (command-line flags; ``None`` values skipped)."""
    settings = _read_file(path)
    environ = os.environ if environ is None else environ
    for name in ENV_FIELDS:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw.strip():
            _set(settings.server, name, raw, f"environment variable {ENV_PREFIX + name.upper()}", strict=False)
    for name, value in (overrides or {}).items():
        if value is not None:
            _set(settings.server, name, value, f"flag --{name.replace('_', '-')}", strict=True)
    return settings


def _read_file(path: str | Path | None) -> Settings:
    if path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        if not default.is_file():
            return Settings()
        path = default
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return msgspec.toml.decode(data, type=Settings)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc}") from None


def _set(server: ServerSettings, name: str, value: Any, source: str, *, strict: bool) -> None:
    if _FIELD_TYPES[name] == list[str] and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]  # ARC_WEBHOOK_ALLOW=a,b
    try:
        converted = msgspec.convert(value, _FIELD_TYPES[name], strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    setattr(server, name, converted)


_FIELD_TYPES = {
    name: Union[tuple(arg for arg in get_args(hint) if arg is not msgspec.UnsetType)]  # noqa: UP007
    for name, hint in get_type_hints(ServerSettings, include_extras=True).items()
}
"""Each ``[server]`` field's type without its UNSET marker, to convert environment strings and flags."""
