"""MQTT device adapter: Shelly Gen2+, Tasmota, Zigbee2MQTT, or any JSON over MQTT.

Registered as ``mqtt`` in the ``gateway.adapters`` entry-point group.
"""

from adapters.mqtt.adapter import MqttAdapter
from adapters.mqtt.config import ChannelSpec, MqttConfig, ProfileName

__all__ = ["ChannelSpec", "MqttAdapter", "MqttConfig", "ProfileName"]
