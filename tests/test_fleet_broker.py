"""gateway.fleet.broker against a real Mosquitto with TLS (a test CA) and a password file:
settings from the config, one-line errors, and the manual PUBACK a persistent session needs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from gateway.config import Config, Secret, parse_config
from gateway.errors import BrokerError, ConfigError
from gateway.fleet.broker import (
    BrokerSettings,
    ack,
    connect,
    hub_settings,
    site_settings,
    site_will,
    tls_context,
)
from gateway.fleet.topics import OFFLINE, ONLINE, Topics
from tests.kit.mosquitto import Mosquitto, TlsFiles, free_port, make_tls_files
from tests.kit.proc import ecgw

pytestmark = pytest.mark.timeout(60)

SITE_PASSWORD = "site-a-password-0123"  # a test's throwaway
TOPIC = "ecgw/sites/site-a/events"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def broker(tmp_path: Path, tls: TlsFiles) -> AsyncIterator[Mosquitto]:
    users = {"site-a": SITE_PASSWORD, "ecgw-hub": "hub-password"}
    async with Mosquitto.running(tmp_path / "broker", users=users, tls=tls) as running:
        yield running


def site_config(tmp_path: Path, broker: Mosquitto, tls: TlsFiles, password: str) -> Config:
    (tmp_path / "site-password").write_text(password + "\n")
    upstream = {
        "mode": "hub",
        "url": broker.url,
        "site_id": "site-a",
        "password_file": "site-password",
        "ca_file": str(tls.ca_cert),
    }
    return parse_config(
        {"gateway": {"state_dir": str(tmp_path / "state")}, "upstream": upstream}, base=tmp_path
    )


async def next_payload(client: aiomqtt.Client, seconds: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(seconds):
        return await anext(aiter(client.messages))


def hub_user(broker: Mosquitto, tls: TlsFiles, client_id: str) -> BrokerSettings:
    return BrokerSettings(
        broker.host, broker.port, ca(tls), "ecgw-hub", Secret("hub-password"), client_id
    )


def ca(tls: TlsFiles) -> ssl.SSLContext:
    return tls_context("hub", str(tls.ca_cert), None, None)


async def publish(broker: Mosquitto, tls: TlsFiles, payload: bytes) -> None:
    """From another client (the hub's user), QoS 1, after the broker's PUBACK."""
    settings = replace(hub_user(broker, tls, "test-publisher"), clean_session=True)
    async with connect(settings, manual_ack=False) as client:
        await client.publish(TOPIC, payload, qos=1)


async def test_a_site_connects_with_tls_and_its_password(
    tmp_path: Path, broker: Mosquitto, tls: TlsFiles
) -> None:
    settings = site_settings(site_config(tmp_path, broker, tls, SITE_PASSWORD))
    assert (settings.username, settings.client_id, settings.clean_session) == (
        "site-a",
        "site-a",
        False,
    )
    assert settings.tls is not None and SITE_PASSWORD not in repr(settings)
    async with connect(settings) as client:
        await client.subscribe(TOPIC, qos=1)
        await publish(broker, tls, b"hello")
        message = await next_payload(client)
        assert message.payload == b"hello"
        assert ack(client, message)


async def test_a_wrong_password_is_one_line_naming_the_broker(
    tmp_path: Path, broker: Mosquitto, tls: TlsFiles
) -> None:
    settings = site_settings(site_config(tmp_path, broker, tls, "wrong"))
    with pytest.raises(BrokerError) as info:
        async with connect(settings):
            pass
    error = info.value
    assert error.reason == "credentials"
    assert str(error) == f"broker 127.0.0.1:{broker.port} refused the connection: Not authorized"
    assert "wrong" not in str(error)


async def test_a_broker_certificate_from_another_ca_is_a_tls_failure(
    tmp_path: Path, broker: Mosquitto, tls: TlsFiles
) -> None:
    other = make_tls_files(tmp_path / "other-ca")
    config = site_config(tmp_path, broker, tls, SITE_PASSWORD)
    assert config.upstream is not None
    settings = site_settings(config)
    settings = replace(settings, tls=tls_context("upstream", str(other.ca_cert), None, None))
    with warnings.catch_warnings():
        # paho 2.2 (_ssl_wrap_socket) does not close the SSL socket whose handshake failed;
        # it is found by the garbage collector, here rather than in a later test.
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(BrokerError) as info:
            async with connect(settings):
                pass
        message, reason = str(info.value), info.value.reason
        del info  # the exception's traceback holds the socket ...
        for _ in range(10):  # ... and so do loop callbacks, which run late on a busy machine:
            await asyncio.sleep(0.05)  # give them time, collecting after each (a CI run
            gc.collect()  # found the socket after three bare loop turns)
    assert reason == "tls"
    assert message.startswith(f"broker 127.0.0.1:{broker.port}: TLS failure: ")
    assert "certificate verify failed" in message and "\n" not in message


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as held:  # bound, not listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        settings = BrokerSettings("127.0.0.1", port, None, None, None, "x")
        with pytest.raises(BrokerError) as info:
            async with connect(settings):
                pass
    assert info.value.reason == "unreachable"
    assert str(info.value) == f"broker 127.0.0.1:{port} is unreachable: Connection refused"


def test_a_ca_file_that_is_no_certificate_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = parse_config(
        {
            "gateway": {"state_dir": str(tmp_path / "state")},
            "hub": {
                "url": f"mqtts://127.0.0.1:{free_port()}",
                "username": "ecgw-hub",
                "password_file": "pw",
                "ca_file": "ca.pem",
            },
        },
        base=tmp_path,
    )
    with pytest.raises(ConfigError) as info:
        hub_settings(config)
    assert info.value.key == "hub.ca_file"


async def test_an_unacked_message_comes_again_after_a_reconnect_and_an_acked_one_does_not(
    tmp_path: Path, broker: Mosquitto, tls: TlsFiles
) -> None:
    settings = site_settings(site_config(tmp_path, broker, tls, SITE_PASSWORD))
    async with connect(settings) as client:
        await client.subscribe(TOPIC, qos=1)
    # Away: the persistent session keeps the subscription and queues the message.
    await publish(broker, tls, b"first")
    async with connect(settings) as client:
        message = await next_payload(client)
        assert message.payload == b"first"
        # not acked: as if the process died before its commit
    async with connect(settings) as client:
        again = await next_payload(client)
        assert again.payload == b"first"  # delivered again
        assert ack(client, again)
    await publish(broker, tls, b"second")
    async with connect(settings) as client:
        following = await next_payload(client)
        assert following.payload == b"second"  # "first" was acked: never again
        assert ack(client, following)
        with pytest.raises(TimeoutError):
            await next_payload(client, seconds=0.5)


async def test_the_will_says_offline_when_a_site_vanishes(
    tmp_path: Path, broker: Mosquitto, tls: TlsFiles
) -> None:
    topics = Topics()
    settings = site_settings(site_config(tmp_path, broker, tls, SITE_PASSWORD))
    hub = replace(hub_user(broker, tls, "hub-watcher"), clean_session=True)
    async with connect(hub, manual_ack=False) as watcher:
        await watcher.subscribe(topics.all_status, qos=1)
        async with connect(settings, will=site_will(topics, "site-a")) as site:
            await site.publish(topics.status("site-a"), ONLINE, qos=1, retain=True)
            assert (await next_payload(watcher)).payload == ONLINE
            sock = site._client.socket()  # the link dies without a DISCONNECT
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)
            message = await next_payload(watcher)
            assert (message.topic.value, message.payload) == ("ecgw/sites/site-a/status", OFFLINE)


async def test_the_printed_acl_keeps_each_site_to_its_own_topics(
    tmp_path: Path, tls: TlsFiles
) -> None:
    (tmp_path / "hub-password").write_text("hub-password\n")
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
        '[hub]\nurl = "mqtts://127.0.0.1"\nusername = "ecgw-hub"\n'
        'password_file = "hub-password"\n'
        '[[hub.sites]]\nsite_id = "site-a"\n[[hub.sites]]\nsite_id = "site-b"\n'
    )
    printed = ecgw("hub", "acl", config=hub_toml)
    assert printed.returncode == 0, printed.stderr
    users = {"site-a": SITE_PASSWORD, "site-b": "site-b-password", "ecgw-hub": "hub-password"}
    broker = Mosquitto(tmp_path / "broker", users=users, tls=tls, acl=printed.stdout)
    topics = Topics()
    await broker.start()
    try:
        site_a = site_settings(site_config(tmp_path, broker, tls, SITE_PASSWORD))
        site_b = replace(site_a, username="site-b", client_id="site-b")
        site_b = replace(site_b, password=Secret("site-b-password"))
        hub = replace(hub_user(broker, tls, "hub"), clean_session=True)
        async with connect(hub, manual_ack=False) as h:
            await h.subscribe(topics.all_reports, qos=1)
            async with (
                connect(site_a, will=site_will(topics, "site-a")) as a,
                connect(site_b) as b,
            ):
                await b.subscribe(topics.events("site-b"), qos=1)
                await a.subscribe(topics.events("site-a"), qos=1)
                await a.subscribe(topics.events("site-b"), qos=1)  # not its own
                await h.publish(topics.events("site-b"), b"for b", qos=1)
                got = await next_payload(b)
                assert got.payload == b"for b"
                ack(b, got)
                with pytest.raises(TimeoutError):
                    await next_payload(a, seconds=0.5)  # site-a never sees site-b's events
                await a.publish(topics.status("site-a"), ONLINE, qos=1, retain=True)
                await a.publish(topics.reports("site-a"), b"own", qos=1)
                report = await next_payload(h)
                assert (report.topic.value, report.payload) == ("ecgw/sites/site-a/reports", b"own")
            # Mosquitto 2.0 answers a denied QoS 1 PUBLISH from an MQTT 3.1.1 client with a
            # PUBACK carrying a reason code (an MQTT 5 field), which paho takes as a protocol
            # error and drops the connection: either way the report goes nowhere.
            with contextlib.suppress(BrokerError):
                async with connect(site_a) as forger:
                    await forger.publish(topics.reports("site-b"), b"forged", qos=1)
            with pytest.raises(TimeoutError):
                await next_payload(h, seconds=0.5)
    finally:
        await broker.stop()
