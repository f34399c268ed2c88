"""The MQTT adapter against a real Mosquitto of its own (started per test on a free port)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import secrets
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from structlog.testing import capture_logs

from adapters.mqtt import MqttAdapter, MqttConfig
from adapters.mqtt.adapter import LogThrottle, default_client_id
from gateway.errors import AdapterLoadError
from gateway.plugin import PushAdapter, Reading, Unit
from gateway.timeutil import Duration
from tests.kit.mosquitto import Mosquitto, TlsFiles, free_port, make_tls_files, mqtt_ingest_rate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]

SHELLY = "shellyplus1pm-a8032ab1c2d3"
STATUS_TOPIC = f"{SHELLY}/status/switch:0"
RPC_TOPIC = f"{SHELLY}/events/rpc"
T0 = 1_700_000_040.0  # a minute boundary

Stream = AsyncGenerator[Sequence[Reading], None]


def _decode_duration(kind: type, value: Any) -> Any:
    """What the gateway's config loader does for Duration fields."""
    if kind is Duration:
        return Duration.parse(value)
    raise NotImplementedError(kind)


def mqtt_config(**table: Any) -> MqttConfig:
    return msgspec.convert({"type": "mqtt", **table}, MqttConfig, dec_hook=_decode_duration)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto.running(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@contextlib.asynccontextmanager
async def publisher(broker: Mosquitto, **kwargs: Any) -> AsyncIterator[aiomqtt.Client]:
    identifier = f"test-publisher-{secrets.token_hex(3)}"
    async with aiomqtt.Client(broker.host, broker.port, identifier=identifier, **kwargs) as client:
        yield client


async def take(
    stream: Stream, enough: Callable[[list[Reading]], bool], timeout: float = 10.0
) -> list[Reading]:
    """Readings from the stream until ``enough(readings)``: awaits messages, never sleeps."""
    readings: list[Reading] = []
    async with asyncio.timeout(timeout):
        while not enough(readings):
            readings.extend(await anext(stream))
    return readings


def count(channel: str, n: int) -> Callable[[list[Reading]], bool]:
    return lambda readings: sum(r.channel == channel for r in readings) >= n


def series(readings: list[Reading], channel: str) -> list[tuple[float, float]]:
    return [(r.at, r.value) for r in readings if r.channel == channel]


def shelly_status(minute: int, *, apower: float = 750.0) -> bytes:
    """A Shelly Plus 1PM ``status/switch:0`` frame; energy rises 12.5 Wh a minute."""
    aenergy = {
        "total": 1000.0 + 12.5 * minute,
        "by_minute": [12500.0] * 3,
        "minute_ts": T0 + 60 * minute,
    }
    status = {"id": 0, "source": "init", "output": True, "apower": apower, "voltage": 230.9}
    return json.dumps({**status, "aenergy": aenergy, "temperature": {"tC": 40.1}}).encode()


def shelly_notify(minute: int, ts: float) -> bytes:
    aenergy = {
        "by_minute": [12500.0] * 3,
        "minute_ts": T0 + 60 * minute,
        "total": 1000.0 + 12.5 * minute,
    }
    params = {"ts": ts, "switch:0": {"id": 0, "aenergy": aenergy}}
    return json.dumps({"src": SHELLY, "method": "NotifyStatus", "params": params}).encode()


def expected_energy(*minutes: int) -> list[tuple[float, float]]:
    return [(T0 + 60 * m, 1000.0 + 12.5 * m) for m in minutes]


# -- profiles end to end --------------------------------------------------------------------------


async def test_shelly_plus_1pm_rising_energy_is_read_in_wh_with_device_time(
    broker: Mosquitto,
) -> None:
    config = mqtt_config(url=broker.url, profile="shelly-gen2", device=SHELLY)
    async with MqttAdapter("plug", config) as adapter, publisher(broker) as pub:
        assert isinstance(adapter, PushAdapter)
        assert [(c.name, c.unit) for c in adapter.channels()] == [
            ("energy", Unit.WH),
            ("power", Unit.W),
        ]
        stream = adapter.stream()
        for minute in range(5):
            await pub.publish(STATUS_TOPIC, shelly_status(minute), qos=1)
        readings = await take(stream, count("energy", 5))
        await stream.aclose()

    assert series(readings, "energy") == expected_energy(0, 1, 2, 3, 4)
    assert [v for _, v in series(readings, "power")] == [750.0] * 5
    assert adapter.malformed_count == 0
    assert not adapter.connected


async def test_shelly_notify_status_frames_are_merged_end_to_end(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="shelly-gen2", device=SHELLY)
    async with MqttAdapter("plug", config) as adapter, publisher(broker) as pub:
        stream = adapter.stream()
        device_now = time.time() + 0.5  # a device clock a little ahead of ours
        await pub.publish(STATUS_TOPIC, shelly_status(0), qos=1)
        await pub.publish(RPC_TOPIC, shelly_notify(1, ts=device_now), qos=1)  # aenergy only
        await pub.publish(STATUS_TOPIC, shelly_status(1, apower=760.0), qos=1)  # minute 1 again
        await pub.publish(RPC_TOPIC, shelly_notify(2, ts=device_now + 60), qos=1)
        readings = await take(stream, count("energy", 3))
        await stream.aclose()

    assert series(readings, "energy") == expected_energy(0, 1, 2)
    power = series(readings, "power")
    assert power[1:] == [(device_now, 750.0), (device_now + 60, 760.0)]  # merged onto status
    assert adapter.dropped_count == 1  # the status frame repeating minute 1


async def test_tasmota_energy_in_kwh_at_receive_time(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="tasmota", device="sonoff-pow-kitchen")
    async with MqttAdapter("pow", config) as adapter, publisher(broker) as pub:
        stream = adapter.stream()
        before = time.time()
        for i, total in enumerate((1234.567, 1234.576, 1234.58)):
            energy = {"TotalStartTime": "2021-03-02T18:44:10", "Total": total, "Power": 110 + i}
            payload = {"Time": "2023-11-14T23:25:00", "ENERGY": energy}
            await pub.publish("tele/sonoff-pow-kitchen/SENSOR", json.dumps(payload), qos=1)
        await pub.publish("tele/sonoff-pow-kitchen/STATE", '{"POWER":"ON"}', qos=1)
        readings = await take(stream, count("energy", 3))
        after = time.time()
        await stream.aclose()

    assert [v for _, v in series(readings, "energy")] == [1234.567, 1234.576, 1234.58]
    assert all(before <= r.at <= after for r in readings)
    assert [c.unit for c in adapter.channels()] == [Unit.KWH, Unit.W]


async def test_tasmota_multichannel_index(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="tasmota", device="shelly25", index=1)
    async with MqttAdapter("hall", config) as adapter, publisher(broker) as pub:
        stream = adapter.stream()
        energy = {"Total": [1.118, 2.146], "Power": [0, 67]}
        payload = {"Time": "2023-11-14T23:23:20+01:00", "ENERGY": energy}
        await pub.publish("tele/shelly25/SENSOR", json.dumps(payload), qos=1)
        readings = await take(stream, count("energy", 1))
        await stream.aclose()
    assert readings == [
        Reading("energy", 1700000600.0, 2.146),
        Reading("power", 1700000600.0, 67.0),
    ]


async def test_zigbee2mqtt_plug_end_to_end(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="zigbee2mqtt", device="kitchen/kettle-plug")
    async with MqttAdapter("kettle", config) as adapter, publisher(broker) as pub:
        stream = adapter.stream()
        await pub.publish(
            "zigbee2mqtt/kitchen/kettle-plug/availability", '{"state":"online"}', qos=1
        )
        for energy, power in ((12.05, 0), (12.05, 1980), (12.08, 1975)):
            state = {
                "current": 8.5,
                "energy": energy,
                "linkquality": 43,
                "power": power,
                "state": "ON",
            }
            await pub.publish("zigbee2mqtt/kitchen/kettle-plug", json.dumps(state), qos=1)
        readings = await take(stream, count("energy", 3))
        await stream.aclose()
    assert [v for _, v in series(readings, "energy")] == [12.05, 12.05, 12.08]
    assert [v for _, v in series(readings, "power")] == [0.0, 1980.0, 1975.0]
    assert adapter.message_count == 3  # the availability topic is not subscribed


async def test_generic_channels_end_to_end(broker: Mosquitto) -> None:
    config = mqtt_config(
        url=broker.url,
        channels={
            "energy": {"topic": "meter/7/state", "path": "$.import.total_wh", "unit": "Wh"},
            "power": {"topic": "meter/7/state", "path": "import.w[0]", "unit": "W"},
            "export": {"topic": "meter/7/export_kwh", "path": "$", "unit": "kWh", "wrap": 100000},
        },
    )
    async with MqttAdapter("meter", config) as adapter, publisher(broker) as pub:
        stream = adapter.stream()
        await pub.publish(
            "meter/7/state", json.dumps({"import": {"total_wh": 5120, "w": [310]}}), qos=1
        )
        await pub.publish("meter/7/export_kwh", "42.5", qos=1)
        readings = await take(stream, lambda got: len(got) >= 3)
        await stream.aclose()
    assert sorted((r.channel, r.value) for r in readings) == [
        ("energy", 5120.0),
        ("export", 42.5),
        ("power", 310.0),
    ]
    assert adapter.channels()[2].wrap == 100000.0


# -- connection lifetime --------------------------------------------------------------------------


async def test_broker_restart_mid_stream_resubscribes_without_duplicates(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="shelly-gen2", device=SHELLY)
    with capture_logs() as logs:
        async with MqttAdapter("plug", config) as adapter:
            stream = adapter.stream()
            async with publisher(broker) as pub:
                for minute in range(3):
                    await pub.publish(STATUS_TOPIC, shelly_status(minute), qos=1)
                readings = await take(stream, count("energy", 3))

            await broker.restart()  # no persistence: the new broker knows no session of ours

            async with publisher(broker) as pub:
                # Retained, so the adapter gets it whether it resubscribes before or after.
                await pub.publish(STATUS_TOPIC, shelly_status(3), qos=1, retain=True)
                readings += await take(stream, count("energy", 4 - len(series(readings, "energy"))))
                assert adapter.connected
                # Subscribed again. Old samples, repeats and the notify of minute 3 add nothing:
                await pub.publish(STATUS_TOPIC, shelly_status(1), qos=1)
                await pub.publish(STATUS_TOPIC, shelly_status(3), qos=1)
                await pub.publish(RPC_TOPIC, shelly_notify(3, ts=time.time()), qos=1)
                for minute in (4, 5):
                    await pub.publish(STATUS_TOPIC, shelly_status(minute), qos=1)
                readings += await take(stream, count("energy", 6 - len(series(readings, "energy"))))
            await stream.aclose()

    assert series(readings, "energy") == expected_energy(0, 1, 2, 3, 4, 5)
    power_times = [at for at, _ in series(readings, "power")]
    assert power_times == sorted(power_times)
    events = [entry["event"] for entry in logs]
    assert "mqtt.connection_lost" in events
    assert "mqtt.reconnected" in events


async def test_qos1_messages_sent_while_the_adapter_is_away_are_delivered(
    broker: Mosquitto,
) -> None:
    config = mqtt_config(url=broker.url, profile="shelly-gen2", device=SHELLY)
    async with MqttAdapter("plug", config):
        pass  # subscribed once: the broker now keeps a persistent session for us
    async with publisher(broker) as pub:
        for minute in (0, 1):
            await pub.publish(STATUS_TOPIC, shelly_status(minute), qos=1)
    async with MqttAdapter("plug", config) as adapter:
        stream = adapter.stream()
        readings = await take(stream, count("energy", 2))
        await stream.aclose()
    assert series(readings, "energy") == expected_energy(0, 1)


async def test_exit_disconnects_cleanly(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="tasmota", device="plug")
    async with MqttAdapter("tidy", config) as adapter:
        assert adapter.connected
        client_id = adapter.client_id
    expected = f"Client {client_id} disconnected."  # a DISCONNECT, not a dropped socket
    deadline = asyncio.get_running_loop().time() + 5.0
    # The broker logs it once it has read the packet (its log is unbuffered stderr): wait for
    # that rather than stop it first, which raced the packet on a loaded machine.
    while expected not in broker.log and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - the log of another process
        await asyncio.sleep(0.05)
    await broker.stop()
    mine = [line for line in broker.log if client_id in line]
    assert expected in mine, mine


async def test_the_stream_waits_until_cancelled(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="tasmota", device="plug")
    async with MqttAdapter("plug", config) as adapter:
        stream = adapter.stream()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # no messages: the stream neither ends nor spins
                await anext(stream)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)  # cancelled inside, so it has ended
        assert adapter.connected


async def test_retained_messages_without_device_time_are_ignored(broker: Mosquitto) -> None:
    async with publisher(broker) as pub:
        stale = {"Time": "2023-11-14T23:25:00", "ENERGY": {"Total": 1.0, "Power": 5}}
        await pub.publish("tele/plug/SENSOR", json.dumps(stale), qos=1, retain=True)
    config = mqtt_config(url=broker.url, profile="tasmota", device="plug")
    async with MqttAdapter("plug", config) as adapter, publisher(broker) as pub:
        stream = adapter.stream()
        live = {"Time": "2023-11-14T23:30:00", "ENERGY": {"Total": 1.1, "Power": 6}}
        await pub.publish("tele/plug/SENSOR", json.dumps(live), qos=1)
        readings = await take(stream, count("energy", 1))
        await stream.aclose()
    assert [(r.channel, r.value) for r in readings] == [("energy", 1.1), ("power", 6.0)]
    assert adapter.message_count == 2
    assert adapter.dropped_count == 2


async def test_malformed_json_is_counted_and_logged_once(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="tasmota", device="plug")
    with capture_logs() as logs:
        async with MqttAdapter("plug", config) as adapter, publisher(broker) as pub:
            stream = adapter.stream()
            for payload in (b'{"ENERGY":{"Total":1.5', b"\xff\xfe", b"{nope}"):
                await pub.publish("tele/plug/SENSOR", payload, qos=1)
            await pub.publish("tele/plug/SENSOR", json.dumps({"ENERGY": {"Total": 1.5}}), qos=1)
            readings = await take(stream, count("energy", 1))
            await stream.aclose()
    assert readings[0].value == 1.5
    assert adapter.malformed_count == 3
    warnings = [entry for entry in logs if entry["event"] == "mqtt.malformed_payload"]
    assert len(warnings) == 1
    assert warnings[0]["count"] == 1
    assert warnings[0]["topic"] == "tele/plug/SENSOR"
    assert warnings[0]["adapter"] == "plug"


# -- failures: clear errors that name the adapter -------------------------------------------------


def assert_clear(error: AdapterLoadError, *parts: str) -> None:
    text = str(error)
    assert text.startswith("adapter 'plug': "), text
    assert error.adapter == "plug"
    assert "\n" not in text
    assert "Traceback" not in text
    assert "[Errno" not in text
    for part in parts:
        assert part in text, text


async def test_wrong_credentials(tmp_path: Path) -> None:
    users = {"gateway": "right-horse-battery"}
    async with Mosquitto.running(tmp_path / "broker", users=users) as broker:
        table = {"url": broker.url, "profile": "tasmota", "device": "plug", "username": "gateway"}
        with pytest.raises(AdapterLoadError) as wrong:
            async with MqttAdapter("plug", mqtt_config(**table, password="wrong-staple")):
                pass
        assert_clear(wrong.value, broker.url, "refused the connection")
        assert "wrong-staple" not in str(wrong.value)

        anonymous = {k: v for k, v in table.items() if k != "username"}
        with pytest.raises(AdapterLoadError) as unauthorised:
            async with MqttAdapter("plug", mqtt_config(**anonymous)):
                pass
        assert_clear(unauthorised.value, "refused the connection")

        async with MqttAdapter("plug", mqtt_config(**table, password=users["gateway"])) as adapter:
            assert adapter.connected


async def test_unknown_host() -> None:
    config = mqtt_config(
        url="mqtt://nonexistent.invalid", profile="tasmota", device="plug", read_timeout="3s"
    )
    with pytest.raises(AdapterLoadError) as caught:
        async with MqttAdapter("plug", config):
            pass
    assert_clear(caught.value, "mqtt://nonexistent.invalid:1883")


async def test_nobody_listening() -> None:
    config = mqtt_config(url=f"mqtt://127.0.0.1:{free_port()}", profile="tasmota", device="plug")
    with pytest.raises(AdapterLoadError) as caught:
        async with MqttAdapter("plug", config):
            pass
    assert_clear(caught.value, "cannot connect to mqtt://127.0.0.1:", "Connection refused")


async def test_a_server_that_never_answers_is_given_up_on() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = mqtt_config(
        url=f"mqtt://127.0.0.1:{port}", profile="tasmota", device="plug", read_timeout="500ms"
    )
    started = time.monotonic()
    try:
        with pytest.raises(AdapterLoadError) as caught:
            async with MqttAdapter("plug", config):
                pass
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert_clear(caught.value, "no answer from", "within 0.5 s")
    assert time.monotonic() - started < 5


async def test_tls_with_ca_file_and_client_certificate(tmp_path: Path, tls_files: TlsFiles) -> None:
    async with Mosquitto.running(tmp_path / "b", tls=tls_files, require_certificate=True) as broker:
        table = {
            "url": broker.url,
            "profile": "tasmota",
            "device": "plug",
            "ca_file": str(tls_files.ca_cert),
        }
        with pytest.raises(AdapterLoadError) as no_certificate:
            async with MqttAdapter("plug", mqtt_config(**table, read_timeout="1s")):
                pass
        assert_clear(no_certificate.value, "cannot connect to mqtts://127.0.0.1:", "certificate")

        table |= {"cert_file": str(tls_files.client_cert), "key_file": str(tls_files.client_key)}
        async with MqttAdapter("plug", mqtt_config(**table)) as adapter:
            stream = adapter.stream()
            tls = aiomqtt.TLSParameters(
                ca_certs=str(tls_files.ca_cert),
                certfile=str(tls_files.client_cert),
                keyfile=str(tls_files.client_key),
            )
            async with publisher(broker, tls_params=tls) as pub:
                await pub.publish("tele/plug/SENSOR", json.dumps({"ENERGY": {"Total": 9.5}}), qos=1)
                readings = await take(stream, count("energy", 1))
            await stream.aclose()
        assert readings[0].value == 9.5


async def test_tls_with_an_unknown_ca_fails_verification(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with Mosquitto.running(tmp_path / "b", tls=tls_files) as broker:
        config = mqtt_config(url=broker.url, profile="tasmota", device="plug")  # system CAs only
        with warnings.catch_warnings():
            # paho 2.2 (_ssl_wrap_socket) does not close the SSL socket whose handshake
            # failed; it is found by the garbage collector, here rather than in a later test.
            warnings.simplefilter("ignore", ResourceWarning)
            with pytest.raises(AdapterLoadError) as caught:
                async with MqttAdapter("plug", config):
                    pass
            assert_clear(caught.value, "certificate verify failed")
            assert "_ssl.c" not in str(caught.value)
            del caught  # the exception's traceback holds the socket ...
            for _ in range(3):
                await asyncio.sleep(0)  # ... and so does a queued loop callback: let it run
            gc.collect()


async def test_tls_files_that_cannot_be_read_name_their_key(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    base = {"url": "mqtts://127.0.0.1:1", "profile": "tasmota", "device": "plug"}
    with pytest.raises(AdapterLoadError) as missing:
        async with MqttAdapter("plug", mqtt_config(**base, ca_file=str(tmp_path / "nope.pem"))):
            pass
    assert_clear(missing.value, "ca_file:", "nope.pem")

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    table = {**base, "ca_file": str(tls_files.ca_cert), "cert_file": str(garbage)}
    with pytest.raises(AdapterLoadError) as bad:
        async with MqttAdapter("plug", mqtt_config(**table)):
            pass
    assert_clear(bad.value, "cert_file", "garbage.pem")


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet: (first byte, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return first, await reader.readexactly(length)


async def test_a_refused_subscription_is_a_load_error() -> None:
    """Against a fake broker speaking MQTT 3.1.1: it accepts the connection and answers
    every SUBSCRIBE with 0x80 (Mosquitto 2.0 grants subscriptions and applies ACLs on
    delivery, so it cannot show this)."""

    async def refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await _read_packet(reader)
                if kind == 0x10:  # CONNECT -> CONNACK accepted
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 0x82:  # SUBSCRIBE -> SUBACK, every topic refused
                    topics, pos = 0, 2
                    while pos < len(body):
                        pos += 2 + int.from_bytes(body[pos : pos + 2], "big") + 1
                        topics += 1
                    writer.write(bytes([0x90, 2 + topics]) + body[:2] + b"\x80" * topics)
                elif kind == 0xE0:  # DISCONNECT
                    break
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(refusing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = mqtt_config(url=f"mqtt://127.0.0.1:{port}", profile="shelly-gen2", device=SHELLY)
    try:
        with pytest.raises(AdapterLoadError) as caught:
            async with MqttAdapter("plug", config):
                pass
    finally:
        server.close()
        await server.wait_closed()
    reply_topic = f"{default_client_id('plug')}/rpc"  # where the device answers our commands
    assert_clear(
        caught.value,
        f"refused the subscription to ['{STATUS_TOPIC}', '{RPC_TOPIC}', '{reply_topic}']",
    )


async def test_reconnect_attempts_back_off_while_the_broker_is_down(broker: Mosquitto) -> None:
    config = mqtt_config(url=broker.url, profile="shelly-gen2", device=SHELLY)
    with capture_logs() as logs:
        async with MqttAdapter("plug", config) as adapter:
            await broker.stop()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await anext(adapter.stream())
            # delays of 0.25-0.5 s, then 0.5-1 s: one or two attempts in a second, not a spin
            failures = [e for e in logs if e["event"] == "mqtt.reconnect_failed"]
            assert 1 <= len(failures) <= 2
            assert "Connection refused" in failures[0]["reason"]

            await broker.start()
            async with publisher(broker) as pub:
                await pub.publish(STATUS_TOPIC, shelly_status(0), qos=1, retain=True)
            readings = await take(adapter.stream(), count("energy", 1))
    assert series(readings, "energy") == expected_energy(0)


async def test_the_stream_needs_the_adapter_open(broker: Mosquitto) -> None:
    adapter = MqttAdapter("plug", mqtt_config(url=broker.url, profile="tasmota", device="plug"))
    with pytest.raises(RuntimeError, match="inside `async with adapter`"):
        await anext(adapter.stream())
    async with adapter:
        with pytest.raises(RuntimeError, match="already open"):
            await adapter.__aenter__()


async def test_ingest_rate_benchmark_runs(broker: Mosquitto) -> None:
    rate = await mqtt_ingest_rate(broker, messages=300)
    assert rate.messages == 300
    assert rate.adapter_per_s > 0
    assert rate.bare_per_s > 0


# -- config ---------------------------------------------------------------------------------------

BASE = {"url": "mqtt://127.0.0.1:1883", "profile": "shelly-gen2", "device": "shelly"}
GENERIC = {
    "url": "mqtt://127.0.0.1",
    "channels": {"energy": {"topic": "m/1", "path": "$", "unit": "Wh"}},
}


def channel(**spec: Any) -> dict[str, Any]:
    return {
        "url": "mqtt://h",
        "channels": {"energy": {"topic": "m/1", "path": "$", "unit": "Wh", **spec}},
    }


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({**BASE, **GENERIC}, "exactly one of `profile` or `channels`"),
        ({"url": "mqtt://h"}, "exactly one of `profile` or `channels`"),
        ({**BASE, "url": "http://broker"}, "`url`"),
        ({**BASE, "url": "mqtt://user:pw@broker"}, "`url`: put credentials in `username`"),
        ({**BASE, "url": "mqtt://broker:99999"}, "`url`"),
        ({**BASE, "url": "mqtt://broker/topic"}, "`url`"),
        ({**BASE, "url": "mqtt://"}, "`url`"),
        ({"url": "mqtt://h", "profile": "tasmota"}, "`device`"),
        ({**BASE, "device": "shellies/+"}, "`device`"),
        ({**BASE, "device": "a/"}, "`device`"),
        ({**BASE, "profile": "zigbee2mqtt", "base_topic": "#"}, "`base_topic`"),
        ({**GENERIC, "device": "x"}, "`device`: only used with a `profile`"),
        ({"url": "mqtt://h", "channels": {}}, "`channels`"),
        (channel(path="ENERGY..Total"), "`channels.energy.path`"),
        (channel(topic="meters/+/state"), "`channels.energy.topic`"),
        (channel(unit="W", kind="energy"), "`channels.energy`"),
        (channel(wrap=-5), "`channels.energy`"),
        (channel(unit="W", wrap=1000), "`channels.energy`"),
        ({**BASE, "ca_file": "/ca.pem"}, "`ca_file`: needs an mqtts:// url"),
        ({**BASE, "url": "mqtts://h", "key_file": "/k.pem"}, "`key_file`"),
        ({**BASE, "password": "secret"}, "`password`"),
        ({**BASE, "keepalive": "0s"}, "`keepalive`"),
        ({**BASE, "client_id": " "}, "`client_id`"),
        ({**BASE, "devcie": "typo"}, "`devcie`"),
        ({**BASE, "switch": -1}, "$.switch"),
        ({**BASE, "profile": "shelly"}, "$.profile"),
        (channel(unit="kwh"), "unit"),
        (channel(jsonpath="$"), "`jsonpath`"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        mqtt_config(**table)
    assert key in str(caught.value)


def test_config_defaults_and_durations() -> None:
    config = mqtt_config(
        url="mqtts://broker.example", profile="zigbee2mqtt", device="plug", keepalive="2m"
    )
    assert config.broker.port == 8883
    assert config.broker.tls
    assert config.keepalive == 120.0
    assert config.base_topic == "zigbee2mqtt"
    assert mqtt_config(
        url="mqtt://[::1]", **{k: BASE[k] for k in ("profile", "device")}
    ).broker.url == ("mqtt://[::1]:1883")


def test_password_is_never_shown() -> None:
    config = mqtt_config(**BASE, username="gw", password="hunter2")
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config)
    assert "password='***'" in repr(config)
    assert config.password == "hunter2"
    assert "password=None" in repr(mqtt_config(**BASE))


# -- pure helpers ---------------------------------------------------------------------------------


def test_client_id_is_stable_and_safe() -> None:
    assert default_client_id("plug") == "ecgw-plug"
    assert default_client_id("kitchen plug") == default_client_id("kitchen plug")
    assert default_client_id("kitchen plug") != default_client_id("kitchen/plug")
    assert default_client_id("kitchen plug").startswith("ecgw-kitchen-plug-")


def test_log_throttle_logs_first_then_once_per_interval_with_the_count() -> None:
    throttle = LogThrottle(interval=60.0)
    assert throttle.hit("a", 0.0) == 1
    assert throttle.hit("a", 1.0) is None
    assert throttle.hit("b", 2.0) == 1  # per key
    assert throttle.hit("a", 30.0) is None
    assert throttle.hit("a", 60.0) == 3  # the two held back, and this one
    assert throttle.hit("a", 61.0) is None
