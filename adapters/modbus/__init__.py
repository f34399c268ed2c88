"""Modbus TCP/RTU device adapter: Eastron SDM120/SDM630, SunSpec meters, register maps.

Registered by the project as ``modbus = "adapters.modbus:ModbusAdapter"`` under
the ``gateway.adapters`` entry-point group. Module map, pure core first::

    codec.py      registers -> numbers, sentinels, scale factors, wrap arithmetic
    points.py     what to read, batching into requests, registers -> readings
    profiles.py   Eastron register maps and the generic map from config
    sunspec.py    SunSpec model-chain walk (state machine) and meter model offsets
    config.py     ModbusConfig / RegisterSpec / ControlSpec
    transport.py  shared pymodbus connections, turns, backoff, error translation
    adapter.py    ModbusAdapter: the loop that ties them together; its switches
"""

from adapters.modbus.adapter import ModbusAdapter
from adapters.modbus.config import ControlSpec, ModbusConfig, RegisterSpec
from adapters.modbus.transport import BackoffPolicy

__all__ = ["BackoffPolicy", "ControlSpec", "ModbusAdapter", "ModbusConfig", "RegisterSpec"]
