"""The TOML config: typed sections, unknown keys refused with the key's name.

Secrets are wrapped in :class:`Secret` as soon as they are read, so a repr, a
log line or an error message can never show them. Relative paths are taken
relative to the config file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from gateway.errors import ConfigError
from gateway.timeutil import Duration

__all__ = [
    "DEFAULT_MAX_KW",
    "ApiConfig",
    "Config",
    "DeliveryConfig",
    "Direction",
    "GatewayConfig",
    "LocationConfig",
    "MeteringConfig",
    "PollConfig",
    "ReportingConfig",
    "ResourceConfig",
    "Secret",
    "WebhookConfig",
    "config_path",
    "convert",
    "load_config",
    "parse_config",
]

ENV_CONFIG = "ECGW_CONFIG"
ENV_CLIENT_SECRET = "ECGW_CLIENT_SECRET"  # noqa: S105 - an environment variable's name
ENV_WEBHOOK_SECRET = "ECGW_WEBHOOK_SECRET"  # noqa: S105 - an environment variable's name


class Secret:
    """A secret string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base of every config table: a typo is an error that names the key."""


class GatewayConfig(Section, frozen=True):
    state_dir: str = "/var/lib/ecgw"


class ApiConfig(Section, frozen=True):
    base_url: str
    token_url: str
    client_id: str
    client_secret: str | None = None
    client_secret_file: str | None = None


class WebhookConfig(Section, frozen=True):
    listen: str = "127.0.0.1:8080"
    path: str = "/notify"
    secret: str | None = None
    secret_file: str | None = None
    max_body: int = 1024 * 1024
    read_timeout: Duration = Duration(10.0)


class PollConfig(Section, frozen=True):
    interval: Duration = Duration(300.0)
    page_size: int = 1000


class DeliveryConfig(Section, frozen=True):
    timeout: Duration = Duration(30.0)
    backoff_initial: Duration = Duration(2.0)
    backoff_max: Duration = Duration(600.0)
    concurrency: int = 4
    retry_after_max: Duration = Duration(3600.0)


class ReportingConfig(Section, frozen=True):
    grace: Duration = Duration(300.0)


class MeteringConfig(Section, frozen=True):
    max_gap: Duration = Duration(900.0)
    raw_retention: Duration = Duration(48 * 3600.0)
    retention: Duration = Duration(62 * 86400.0)


Direction = Literal["import", "net"]
"""How a metered resource's energy counts. ``import`` (the default): only energy drawn
from the grid counts; exported energy (negative power, a counter running back) is no
consumption, so an interval of pure export reports 0 kWh. ``net``: import minus export,
so an interval may report a negative kWh (a battery that discharged more than it charged)."""

DEFAULT_MAX_KW = 1000.0
"""A resource's or location's plausible maximum power, unless configured: readings that
would need more (a counter jump, a power value) are rejected as glitches."""


class ResourceConfig(Section, frozen=True):
    resource_id: str
    location_id: str
    adapter: str
    meter_point_id: str | None = None
    channel: str = "energy"
    direction: Direction = "import"
    max_kw: float = DEFAULT_MAX_KW


class LocationConfig(Section, frozen=True):
    location_id: str
    meter_point_id: str
    adapter: str
    channel: str = "energy"
    direction: Direction = "import"
    max_kw: float = DEFAULT_MAX_KW


class Config(Section, frozen=True):
    gateway: GatewayConfig = GatewayConfig()
    api: ApiConfig | None = None
    webhook: WebhookConfig | None = None
    poll: PollConfig | None = None
    delivery: DeliveryConfig = DeliveryConfig()
    reporting: ReportingConfig = ReportingConfig()
    metering: MeteringConfig = MeteringConfig()
    adapters: dict[str, dict[str, Any]] = {}
    resources: list[ResourceConfig] = []
    locations: list[LocationConfig] = []
    # Not TOML keys: filled in by the loader.
    client_secret: Secret | None = None
    webhook_secret: Secret | None = None
    source: str = "<memory>"

    @property
    def state_path(self) -> Path:
        return Path(self.gateway.state_dir)

    @property
    def db_path(self) -> Path:
        return self.state_path / "ecgw.sqlite3"

    def require_api(self) -> ApiConfig:
        if self.api is None:
            raise ConfigError("the [api] table is required to run the gateway", key="api")
        if self.client_secret is None:
            raise ConfigError(
                f"no client secret: set api.client_secret, api.client_secret_file or "
                f"{ENV_CLIENT_SECRET}",
                key="api.client_secret",
            )
        return self.api


T = TypeVar("T")

_LOADER_ONLY = {"client_secret", "webhook_secret", "source"}
_PATH = re.compile(r" - at `\$(.*)`$")


def _dec_hook(type_: type, value: Any) -> Any:
    if type_ is Duration:
        return Duration.parse(value)
    raise NotImplementedError(f"cannot read a {type_.__name__}")


def convert(data: Mapping[str, Any], type_: type[T], *, prefix: str = "") -> T:
    """``msgspec.convert`` with durations, turning its errors into ConfigError(key=...)."""
    try:
        return msgspec.convert(data, type_, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        path = match.group(1) if match else ""
        text = _PATH.sub("", text)
        unknown = re.match(r"Object contains unknown field `(.+)`", text)
        if unknown:
            path, text = f"{path}.{unknown.group(1)}", "unknown key"
        missing = re.match(r"Object missing required field `(.+)`", text)
        if missing:
            path, text = f"{path}.{missing.group(1)}", "required key is missing"
        key = (prefix + path).replace("$", "").lstrip(".") or None
        raise ConfigError(text.rstrip("."), key=key) from None


def _read_secret(
    value: str | None, file: str | None, env: str, base: Path, key: str
) -> Secret | None:
    if os.environ.get(env):
        return Secret(os.environ[env])
    if value is not None and file is not None:
        raise ConfigError(f"give {key} or {key}_file, not both", key=key)
    if value is not None:
        return Secret(value)
    if file is not None:
        path = base / file
        try:
            return Secret(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key=f"{key}_file") from None
    return None


def _check(cfg: Config) -> None:
    names = set(cfg.adapters)
    for i, res in enumerate(cfg.resources):
        if res.adapter not in names:
            raise ConfigError(f"no [adapters.{res.adapter}] table", key=f"resources[{i}].adapter")
    for i, loc in enumerate(cfg.locations):
        if loc.adapter not in names:
            raise ConfigError(f"no [adapters.{loc.adapter}] table", key=f"locations[{i}].adapter")
    seen: set[str] = set()
    for i, res in enumerate(cfg.resources):
        if res.resource_id in seen:
            raise ConfigError(f"{res.resource_id!r} is listed twice", key=f"resources[{i}]")
        seen.add(res.resource_id)
    for name, table in cfg.adapters.items():
        if not isinstance(table.get("type"), str):
            raise ConfigError("required key is missing", key=f"adapters.{name}.type")
    if cfg.delivery.concurrency < 1:
        raise ConfigError("must be at least 1", key="delivery.concurrency")
    if cfg.webhook is not None:
        host, _, port = cfg.webhook.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("expected HOST:PORT", key="webhook.listen")
        if not cfg.webhook.path.startswith("/"):
            raise ConfigError("must start with '/'", key="webhook.path")
    if cfg.poll is not None and not 1 <= cfg.poll.page_size <= 1000:
        raise ConfigError("must be between 1 and 1000", key="poll.page_size")


def parse_config(data: Mapping[str, Any], *, base: Path, source: str = "<memory>") -> Config:
    """A Config from parsed TOML; ``base`` resolves relative paths."""
    for key in _LOADER_ONLY:
        if key in data:
            raise ConfigError("unknown key", key=key)
    cfg = convert(data, Config)
    state_dir = str((base / cfg.gateway.state_dir).resolve())
    client_secret = None
    if cfg.api is not None:
        client_secret = _read_secret(
            cfg.api.client_secret,
            cfg.api.client_secret_file,
            ENV_CLIENT_SECRET,
            base,
            "api.client_secret",
        )
    webhook_secret = None
    if cfg.webhook is not None:
        webhook_secret = _read_secret(
            cfg.webhook.secret,
            cfg.webhook.secret_file,
            ENV_WEBHOOK_SECRET,
            base,
            "webhook.secret",
        )
        if webhook_secret is None or not webhook_secret.reveal():
            raise ConfigError(
                f"a webhook needs a secret: set webhook.secret, webhook.secret_file or "
                f"{ENV_WEBHOOK_SECRET}",
                key="webhook.secret",
            )
    # From here on the secrets live only in Secret wrappers.
    api = cfg.api and msgspec.structs.replace(cfg.api, client_secret=None)
    webhook = cfg.webhook and msgspec.structs.replace(cfg.webhook, secret=None)
    cfg = msgspec.structs.replace(
        cfg,
        api=api,
        webhook=webhook,
        gateway=GatewayConfig(state_dir=state_dir),
        client_secret=client_secret,
        webhook_secret=webhook_secret,
        source=source,
    )
    _check(cfg)
    return cfg


def config_path(given: str | None) -> Path:
    """The config file named by ``-c`` or, failing that, ``ECGW_CONFIG``."""
    name = given or os.environ.get(ENV_CONFIG)
    if not name:
        raise ConfigError(f"no config file: pass -c FILE or set {ENV_CONFIG}")
    return Path(name)


def load_config(given: str | None) -> Config:
    path = config_path(given)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, base=path.resolve().parent, source=str(path))
