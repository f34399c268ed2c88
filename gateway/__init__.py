"""ECGW, the Energy Coordination Gateway.

What adapter authors may import from here: the plugin API and the errors an
adapter raises. Everything else is the gateway's own business and may change.
"""

from gateway.backoff import Backoff
from gateway.errors import (
    AdapterError,
    AdapterLoadError,
    AdapterReadError,
    ConfigError,
    GatewayError,
)
from gateway.plugin import (
    SWITCH,
    Adapter,
    AdapterConfig,
    Channel,
    ChannelKind,
    Control,
    ControlKind,
    ControllableAdapter,
    ControlState,
    PollingAdapter,
    PushAdapter,
    Reading,
    Unit,
)
from gateway.timeutil import Duration, parse_timestamp

__all__ = [
    # the plugin API
    "Adapter",
    "AdapterConfig",
    "Channel",
    "ChannelKind",
    "Control",
    "ControlKind",
    "ControllableAdapter",
    "ControlState",
    "SWITCH",
    "Duration",
    "PollingAdapter",
    "PushAdapter",
    "Reading",
    "Unit",
    # helpers an adapter may use
    "Backoff",
    "parse_timestamp",
    # errors an adapter raises or meets
    "AdapterError",
    "AdapterLoadError",
    "AdapterReadError",
    "ConfigError",
    "GatewayError",
]
