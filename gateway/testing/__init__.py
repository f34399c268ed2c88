"""The adapter author's kit: test fixtures and a conformance suite for adapter plugins.

Installing ``ecgw`` registers :mod:`gateway.testing.pytest_plugin` with pytest (the
``pytest11`` entry point), so an adapter project's tests get these fixtures without
importing anything: ``ecgw_clock`` (:class:`ManualClock`), ``ecgw_sandbox`` (the Spark
sandbox, in-process), ``ecgw_mosquitto`` (a private broker, :class:`Mosquitto`) and
``ecgw_modbus`` (a Modbus TCP server with a register map, :class:`RegisterServer`).

The conformance suite checks an adapter class the way the gateway will use it::

    from gateway.testing import conformance
    TestMyMeter = conformance.suite(MyMeter, device=my_device)

Nothing here is imported by the gateway itself; it needs the ``kit`` extra (pytest and
pytest-asyncio), which ``ecgw[test]`` includes.
"""

from gateway.testing import conformance
from gateway.testing.clock import ManualClock
from gateway.testing.conformance import config_for
from gateway.testing.modbus import RegisterServer, u32_words
from gateway.testing.mosquitto import Mosquitto

__all__ = ["ManualClock", "Mosquitto", "RegisterServer", "config_for", "conformance", "u32_words"]
