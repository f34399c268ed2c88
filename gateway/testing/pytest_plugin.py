"""Fixtures for adapter tests, registered with pytest by installing ``ecgw`` (``pytest11``).

* ``ecgw_clock``: a :class:`~gateway.testing.ManualClock` at 2026-01-01T00:00:00Z.
* ``ecgw_sandbox``: the Spark sandbox API in-process on 127.0.0.1 (a free port), a
  :class:`gateway.sandbox.Sandbox` (``base_url``, ``token_url``, ``wait_for_reports``).
* ``ecgw_mosquitto``: a private Mosquitto broker (:class:`~gateway.testing.Mosquitto`);
  skipped, saying why, when the ``mosquitto`` binary is not installed.
* ``ecgw_modbus``: an async factory of Modbus TCP servers with a register map:
  ``server = await ecgw_modbus({0: 0, 1: 1500})`` (:class:`~gateway.testing.RegisterServer`),
  stopped after the test.

The async fixtures need pytest-asyncio (``pip install 'ecgw[kit]'``); they work in its
strict and auto modes.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.clock import ManualClock
from gateway.testing.modbus import RegisterServer
from gateway.testing.mosquitto import MOSQUITTO, Mosquitto

__all__ = ["ecgw_clock"]  # and ecgw_sandbox, ecgw_mosquitto, ecgw_modbus, by fixture name

ModbusFactory = Callable[..., Awaitable[RegisterServer]]


@pytest.fixture
def ecgw_clock() -> ManualClock:
    return ManualClock()


if importlib.util.find_spec("pytest_asyncio") is None:  # pragma: no cover - ecgw[kit] has it
    # pytest loads this plugin wherever ecgw is installed: never break a run without it.

    _NEEDS = "ecgw's async fixtures need pytest-asyncio: pip install 'ecgw[kit]'"

    @pytest.fixture(name="ecgw_sandbox")
    def _no_sandbox() -> None:
        pytest.skip(_NEEDS)

    @pytest.fixture(name="ecgw_mosquitto")
    def _no_mosquitto() -> None:
        pytest.skip(_NEEDS)

    @pytest.fixture(name="ecgw_modbus")
    def _no_modbus() -> None:
        pytest.skip(_NEEDS)
else:
    import pytest_asyncio

    @pytest_asyncio.fixture(name="ecgw_sandbox")
    async def _sandbox() -> AsyncIterator[Any]:
        from gateway.sandbox import run_sandbox  # the sandbox pulls in aiohttp's server

        async with run_sandbox() as sandbox:
            yield sandbox

    @pytest_asyncio.fixture(name="ecgw_mosquitto")
    async def _mosquitto(tmp_path: Path) -> AsyncIterator[Mosquitto]:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt install mosquitto): no broker to test on")
        async with Mosquitto.running(tmp_path / "mosquitto") as broker:
            yield broker

    @pytest_asyncio.fixture(name="ecgw_modbus")
    async def _modbus() -> AsyncIterator[ModbusFactory]:
        async with contextlib.AsyncExitStack() as stack:

            async def start(
                holding: Mapping[int, int] | None = None,
                *,
                input: Mapping[int, int] | None = None,
                unit: int = 1,
            ) -> RegisterServer:
                running = RegisterServer.running(holding, input=input, unit=unit)
                return await stack.enter_async_context(running)

            yield start
