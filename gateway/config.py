"""The TOML config: typed sections, unknown keys refused with the key's name.

Secrets are wrapped in :class:`Secret` as soon as they are read, so a repr, a
log line or an error message can never show them. Relative paths are taken
relative to the config file's folder.

Every value has a range and the keys obey rules between them
(:mod:`gateway.config_rules`), so what loads is what the gateway can run with: a
config problem is one :class:`ConfigError` naming the key, found by ``ecgw check``
as well as ``ecgw run``, never a crash later.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from gateway.config_hints import with_hint
from gateway.config_rules import (
    LIMITS,
    Limit,
    check_fleet_tables,
    check_values,
    key_name,
    parse_listen,
)
from gateway.config_rules import shown as _shown
from gateway.errors import ConfigError, validation_parts
from gateway.timeutil import Duration

__all__ = [
    "DEFAULT_MAX_KW",
    "AdminConfig",
    "ApiConfig",
    "Config",
    "ControlConfig",
    "DeliveryConfig",
    "Direction",
    "FleetSiteConfig",
    "GatewayConfig",
    "HubConfig",
    "LIMITS",
    "Limit",
    "LocationConfig",
    "LpcConfig",
    "MeteringConfig",
    "Participation",
    "PollConfig",
    "ReportingConfig",
    "ResourceConfig",
    "Secret",
    "UpstreamConfig",
    "WebhookConfig",
    "config_path",
    "convert",
    "key_name",
    "load_config",
    "parse_config",
    "parse_listen",
]

ENV_CONFIG = "ECGW_CONFIG"
ENV_CLIENT_SECRET = "ECGW_CLIENT_SECRET"  # noqa: S105 - an environment variable's name
ENV_WEBHOOK_SECRET = "ECGW_WEBHOOK_SECRET"  # noqa: S105 - an environment variable's name
MAX_CONFIG_BYTES = 1024 * 1024  # a config file is a few KiB; /dev/zero is not one
MAX_SECRET_BYTES = 64 * 1024


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


NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class GatewayConfig(Section, frozen=True):
    state_dir: NonEmpty = "/var/lib/ecgw"


class ApiConfig(Section, frozen=True):
    base_url: str
    token_url: str
    client_id: NonEmpty
    client_secret: str | None = None
    client_secret_file: str | None = None


class WebhookConfig(Section, frozen=True):
    listen: str = "127.0.0.1:8080"
    path: str = "/notify"
    secret: str | None = None
    secret_file: str | None = None
    max_body: int = 1024 * 1024
    read_timeout: Duration = Duration(10.0)


class AdminConfig(Section, frozen=True):
    listen: str = "127.0.0.1:9464"
    """Where ``/healthz`` and ``/metrics`` are served (off when the table is absent)."""


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
    max_wait: Duration = Duration(6 * 3600.0)
    """How long a due report waits for intervals that lack readings (an adapter restarting,
    a device that buffers and sends late) before it is built with what exists; never
    past the day before the month-end cutoff."""


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


Participation = Literal["shift", "report", "off"]
"""How a resource takes part in PriceCurve events. ``shift``: the gateway moves the
resource's energy need into the best-paid intervals (needs ``control`` and ``need_kwh``);
``report``: something else steers it, the gateway reports what it used; ``off``: not
taken part, never reported."""


class ResourceConfig(Section, frozen=True):
    resource_id: NonEmpty
    location_id: NonEmpty
    adapter: NonEmpty
    meter_point_id: NonEmpty | None = None
    channel: NonEmpty = "energy"
    direction: Direction = "import"
    max_kw: float = DEFAULT_MAX_KW
    control: NonEmpty | None = None
    """The adapter's control that switches this resource (``switch`` for every built-in)."""
    rated_kw: float | None = None
    """The power the resource draws when switched on (needed with ``control``)."""
    priority: int = 0
    """Which loads go first under a cap: the lowest priority is switched off first."""
    participation: Participation | None = None
    """Default: ``shift`` with a control and a ``need_kwh``, else ``report``."""
    need_kwh: float | None = None
    """For ``shift``: the energy the resource must get within each PriceCurve event."""
    allowed: list[str] = []
    """For ``shift``: UTC windows it may run in, ``"HH:MM-HH:MM"`` (may wrap midnight);
    empty: any time."""
    strategy: NonEmpty | None = None
    """For ``shift``: a strategy plugin (entry-point group ``gateway.strategies``) to use
    instead of the built-in ``shift``."""

    @property
    def takes_part(self) -> Participation:
        if self.participation is not None:
            return self.participation
        if self.control is not None and self.need_kwh is not None:
            return "shift"
        return "report"


class LocationConfig(Section, frozen=True):
    location_id: NonEmpty
    meter_point_id: NonEmpty
    adapter: NonEmpty
    channel: NonEmpty = "energy"
    direction: Direction = "import"
    max_kw: float = DEFAULT_MAX_KW
    power_channel: NonEmpty = "power"
    """The location meter's instantaneous power (kW or W), read to hold a cap."""


class LpcConfig(Section, frozen=True):
    margin_kw: float = 0.2
    """Held below every cap: the controller keeps the location at ``cap - margin_kw``."""
    failsafe: Duration = Duration(10.0)
    """The longest a location's power may go unread during a cap before its controllable
    loads are switched off."""
    decline_unknown: bool = False
    """Decline targets at locations this gateway does not own (default: leave them out of
    both lists: another gateway of the partner answers for them)."""
    lead: Duration = Duration(5.0)
    """How long before a capped interval starts its loads are switched off."""


class ControlConfig(Section, frozen=True):
    dry_run: bool = False
    """Compute and show every plan, switch nothing (and so decline every LPC target)."""
    publish: str | None = None
    """``mqtt://host:port/prefix``: plans as retained JSON under ``prefix/plans/EVENT_ID``."""
    confirm_timeout: Duration = Duration(5.0)
    """How long a command waits for the device to report the commanded state."""
    attempts: int = 3
    """Tries per command before it is recorded as failed."""


class FleetSiteConfig(Section, frozen=True):
    """One site of the fleet (``[[hub.sites]]``): what it owns. Each id belongs to at most
    one site."""

    site_id: NonEmpty
    """The site's broker user name and topic level (``<prefix>/sites/<site_id>/...``)."""
    resources: list[str] = []
    """Resource ids: PriceCurve and ResourceLPC targets naming them go to this site."""
    locations: list[str] = []
    """Location ids: LocationLPC and LPCReservation targets naming them go to this site."""
    meter_points: list[str] = []
    """Meter point ids (an LPC target whose location no site lists goes by these)."""


class HubConfig(Section, frozen=True):
    """``ecgw hub``: the broker the hub connects to, and the sites it serves
    (docs/fleet.md)."""

    url: NonEmpty
    """``mqtts://HOST[:PORT]`` (8883 by default) or ``mqtt://HOST[:PORT]`` (1883)."""
    username: NonEmpty | None = None
    """The hub's broker user (needed with ``password_file``; the ACL's hub user)."""
    password_file: str | None = None
    """A file holding the broker password; or give ``client_cert_file`` and
    ``client_key_file``."""
    client_cert_file: str | None = None
    """A client certificate (PEM) the broker knows: over mqtts:// only."""
    client_key_file: str | None = None
    """The client certificate's private key (PEM)."""
    ca_file: str | None = None
    """The CA that signed the broker's certificate (default: the system's CAs)."""
    client_id: NonEmpty = "ecgw-hub"
    """The persistent session's id: unique per hub instance."""
    prefix: NonEmpty = "ecgw"
    """The topics' first levels: ``<prefix>/sites/<site>/...``; the same at hub and sites."""
    share_group: NonEmpty = "ecgw-hubs"
    """The shared subscription's group: hubs in one group share the sites' reports."""
    sites: list[FleetSiteConfig] = []
    """Sites from the config (``ecgw hub sites import FILE`` adds more)."""


class UpstreamConfig(Section, frozen=True):
    """A site of a fleet: events come from, and reports go to, the hub over a broker,
    instead of ``[api]``, ``[webhook]`` and ``[poll]`` (docs/fleet.md)."""

    mode: Literal["hub"]
    """``hub``: the one mode so far."""
    url: NonEmpty
    """``mqtts://HOST[:PORT]`` (8883 by default) or ``mqtt://HOST[:PORT]`` (1883)."""
    site_id: NonEmpty
    """This site's id: its broker user name and client id."""
    password_file: str | None = None
    """A file holding the site's broker password; or give ``client_cert_file`` and
    ``client_key_file``."""
    client_cert_file: str | None = None
    """A client certificate (PEM) the broker knows: over mqtts:// only."""
    client_key_file: str | None = None
    """The client certificate's private key (PEM)."""
    ca_file: str | None = None
    """The CA that signed the broker's certificate (default: the system's CAs)."""
    prefix: NonEmpty = "ecgw"
    """The topics' first levels: the hub's ``prefix``."""
    answer_timeout: Duration = Duration(30.0)
    """How long a published report waits for the hub's answer before it is retried."""


class Config(Section, frozen=True):
    gateway: GatewayConfig = GatewayConfig()
    api: ApiConfig | None = None
    webhook: WebhookConfig | None = None
    poll: PollConfig | None = None
    admin: AdminConfig | None = None
    delivery: DeliveryConfig = DeliveryConfig()
    reporting: ReportingConfig = ReportingConfig()
    metering: MeteringConfig = MeteringConfig()
    lpc: LpcConfig = LpcConfig()
    control: ControlConfig = ControlConfig()
    adapters: dict[str, dict[str, Any]] = {}
    resources: list[ResourceConfig] = []
    locations: list[LocationConfig] = []
    hub: HubConfig | None = None
    upstream: UpstreamConfig | None = None
    # Not TOML keys: filled in by the loader.
    client_secret: Secret | None = None
    webhook_secret: Secret | None = None
    hub_password: Secret | None = None
    upstream_password: Secret | None = None
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


# --- loading ------------------------------------------------------------------------------------

T = TypeVar("T")

_LOADER_ONLY = {"client_secret", "webhook_secret", "hub_password", "upstream_password", "source"}


def _dec_hook(type_: type, value: Any) -> Any:
    if type_ is Duration:
        return Duration.parse(value)
    raise NotImplementedError(f"cannot read a {type_.__name__}")


def convert(data: Mapping[str, Any], type_: type[T], *, prefix: str = "") -> T:
    """``msgspec.convert`` with durations, turning its errors into ConfigError(key=...)
    with a hint: the nearest valid key, the valid values of a choice."""
    try:
        return msgspec.convert(data, type_, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        path, message = validation_parts(exc)
        key = ".".join(p for p in (prefix, path) if p) or None
        raise ConfigError(with_hint(type_, path, message), key=key) from None


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``; raises ValueError if there are more, OSError."""
    if "\x00" in str(path):
        raise ValueError("the path contains a NUL character")
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it is larger than {limit // 1024} KiB")
    return data


def _read_secret(
    value: str | None, file: str | None, env: str, base: Path, key: str
) -> Secret | None:
    if os.environ.get(env):
        return Secret(os.environ[env])
    if value is not None and file is not None:
        raise ConfigError(f"give {key} or {key}_file, not both", key=key)
    if value is not None:
        return Secret(value)
    if file is None:
        return None
    return _secret_file(base / file, f"{key}_file")


def _secret_file(path: Path, key: str) -> Secret:
    """The secret in ``path`` (one trailing newline dropped); ConfigError naming ``key``."""
    try:
        return Secret(_read_bounded(path, MAX_SECRET_BYTES).decode().rstrip("\r\n"))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read {_shown(str(path))}: {reason}", key=key) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{_shown(str(path))} is not UTF-8 (byte {exc.start})", key=key) from None
    except ValueError as exc:
        raise ConfigError(f"cannot read {_shown(str(path))}: {exc}", key=key) from None


BrokerTable = TypeVar("BrokerTable", HubConfig, UpstreamConfig)
_BROKER_FILES = ("password_file", "client_cert_file", "client_key_file", "ca_file")


def _broker_table(
    table: BrokerTable | None, section: str, base: Path
) -> tuple[BrokerTable | None, Secret | None]:
    """``[hub]`` or ``[upstream]`` with its file paths made absolute and each file read
    (a TLS file only to prove it readable), and the broker password, if it has one."""
    if table is None:
        return None, None
    paths: dict[str, str] = {}
    for name in _BROKER_FILES:
        if (written := getattr(table, name)) is not None:
            path = base / written
            paths[name] = str(path)
            if name != "password_file":
                _readable(path, f"{section}.{name}")
    password = None
    if table.password_file is not None:
        password = _secret_file(Path(paths["password_file"]), f"{section}.password_file")
        if not password.reveal():
            raise ConfigError("the password file is empty", key=f"{section}.password_file")
    return msgspec.structs.replace(table, **paths), password


def _readable(path: Path, key: str) -> None:
    try:
        _read_bounded(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read {_shown(str(path))}: {reason}", key=key) from None
    except ValueError as exc:
        raise ConfigError(f"cannot read {_shown(str(path))}: {exc}", key=key) from None


def _state_dir(written: str, base: Path) -> str:
    if "\x00" in written:
        raise ConfigError("contains a NUL character", key="gateway.state_dir")
    try:
        return str((base / written).resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ConfigError(
            f"cannot resolve {_shown(written)}: {exc}", key="gateway.state_dir"
        ) from None


def parse_config(data: Mapping[str, Any], *, base: Path, source: str = "<memory>") -> Config:
    """A Config from parsed TOML; ``base`` resolves relative paths."""
    for key in _LOADER_ONLY:
        if key in data:
            raise ConfigError("unknown key", key=key)
    cfg = convert(data, Config)
    check_fleet_tables(cfg)
    state_dir = _state_dir(cfg.gateway.state_dir, base)
    client_secret = None
    if cfg.api is not None:
        client_secret = _read_secret(
            cfg.api.client_secret,
            cfg.api.client_secret_file,
            ENV_CLIENT_SECRET,
            base,
            "api.client_secret",
        )
        if client_secret is not None and not client_secret.reveal():
            raise ConfigError("the client secret is empty", key="api.client_secret")
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
    hub, hub_password = _broker_table(cfg.hub, "hub", base)
    upstream, upstream_password = _broker_table(cfg.upstream, "upstream", base)
    # From here on the secrets live only in Secret wrappers.
    api = cfg.api and msgspec.structs.replace(cfg.api, client_secret=None)
    webhook = cfg.webhook and msgspec.structs.replace(cfg.webhook, secret=None)
    cfg = msgspec.structs.replace(
        cfg,
        api=api,
        webhook=webhook,
        hub=hub,
        upstream=upstream,
        gateway=GatewayConfig(state_dir=state_dir),
        client_secret=client_secret,
        webhook_secret=webhook_secret,
        hub_password=hub_password,
        upstream_password=upstream_password,
        source=source,
    )
    check_values(cfg)
    return cfg


def config_path(given: str | None) -> Path:
    """The config file named by ``-c`` or, failing that, ``ECGW_CONFIG``."""
    name = given or os.environ.get(ENV_CONFIG)
    if not name:
        raise ConfigError(f"no config file: pass -c FILE or set {ENV_CONFIG}")
    return Path(name)


def _parse_toml(path: Path) -> dict[str, Any]:
    shown = _shown(str(path))
    try:
        raw = _read_bounded(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read config file {shown}: {reason}") from None
    except ValueError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{shown} is not UTF-8 (byte {exc.start} is {raw[exc.start]:#04x})"
        ) from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{shown} is not valid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, and int() of a 5,000-digit literal
        message = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{shown} is not valid TOML: {message}") from None


def load_config(given: str | None) -> Config:
    path = config_path(given)
    data = _parse_toml(path)
    try:
        base = path.resolve().parent
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot resolve {_shown(str(path))}: {exc}") from None
    return parse_config(data, base=base, source=str(path))
