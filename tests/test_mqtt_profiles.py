"""The MQTT adapter's pure core: recorded device payloads in, readings out. No broker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.mqtt.config import ChannelSpec, MqttConfig
from adapters.mqtt.jsonpath import MISSING, JsonPath
from adapters.mqtt.profiles import (
    Decoder,
    Found,
    Generic,
    Profile,
    Sample,
    ShellyGen2,
    Tasmota,
    Zigbee2Mqtt,
    build_profile,
    deep_merge,
    number,
)
from gateway.plugin import Channel, ChannelKind, Reading, Unit

FIXTURES = Path(__file__).parent / "fixtures" / "mqtt"
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Recorded:
    received_at: float
    retained: bool
    topic: str
    payload: bytes


def recording(name: str) -> list[Recorded]:
    """A ``mosquitto_sub -F '%U %r %t %p'`` recording (see fixtures/mqtt/README.md)."""
    records = []
    for line in (FIXTURES / name).read_bytes().splitlines():
        at, retained, topic, payload = line.split(b" ", 3)
        records.append(Recorded(float(at), retained == b"1", topic.decode(), payload))
    return records


def replay(decoder: Decoder, records: list[Recorded]) -> list[Reading]:
    readings = []
    for record in records:
        decoded = decoder.decode(
            record.topic, record.payload, retained=record.retained, received_at=record.received_at
        )
        assert decoded.malformed is None, record
        readings.extend(decoded.readings)
    return readings


def series(readings: list[Reading], channel: str) -> list[tuple[float, float]]:
    return [(r.at, r.value) for r in readings if r.channel == channel]


def decode(decoder: Decoder, topic: str, document: object, **kwargs: Any) -> list[Reading]:
    kwargs.setdefault("received_at", NOW)
    return decoder.decode(topic, msgspec.json.encode(document), **kwargs).readings


# -- Shelly Gen2 ----------------------------------------------------------------------------------

SHELLY = "shellyplus1pm-a8032ab1c2d3"


def test_shelly_plus_1pm_recording_gives_energy_in_wh_at_the_devices_minute() -> None:
    decoder = Decoder(ShellyGen2(SHELLY))
    readings = replay(decoder, recording("shelly-plus-1pm.txt"))

    assert series(readings, "energy") == [
        (1699999980.0, 1523.412),
        (1700000040.0, 1536.435),
        (1700000100.0, 1567.162),
        (1700000160.0, 1579.401),  # from a NotifyStatus alone, no status frame after it
    ]
    assert series(readings, "power") == [
        (1700000000.413002, 0.0),  # status frame, before any NotifyStatus: receive time
        (1700000012.48, 0.0),  # NotifyStatus (output on): merged apower, params.ts
        (1700000014.57, 1843.6),  # from here on, status frames only update the state
        (1700000040.07, 1843.6),
        (1700000100.05, 1843.6),
        (1700000123.9, 0.0),
        (1700000160.04, 0.0),
    ]
    assert [c.unit for c in decoder.profile.channels] == [Unit.WH, Unit.W]


def test_shelly_status_and_notify_for_the_same_minute_give_one_energy_reading() -> None:
    decoder = Decoder(ShellyGen2(SHELLY))
    records = recording("shelly-plus-1pm.txt")
    dropped = 0
    for record in records:
        dropped += decoder.decode(
            record.topic, record.payload, received_at=record.received_at
        ).dropped
    # every frame repeats the last committed minute until the next one is committed
    assert dropped == 8


def test_shelly_pro_2pm_reads_the_configured_switch_and_drops_null_keys() -> None:
    profile = ShellyGen2("garage/pro2pm", switch=1)
    readings = replay(Decoder(profile), recording("shelly-pro-2pm.txt"))

    assert profile.topics == ("garage/pro2pm/status/switch:1", "garage/pro2pm/events/rpc")
    assert series(readings, "energy") == [
        (1700003580.0, 80211.904),
        (1700003640.0, 80218.776),
        (1700003700.0, 80223.357),
    ]
    assert series(readings, "power")[-2:] == [(1700003680.12, 0.0), (1700003700.03, 0.0)]
    assert "timer_started_at" not in profile.state
    assert "timer_duration" not in profile.state
    assert profile.state["output"] is False
    assert profile.state["voltage"] == 229.8  # kept from the status frame


def notify(ts: float, change: dict[str, Any], method: str = "NotifyStatus") -> dict[str, Any]:
    return {
        "src": SHELLY,
        "dst": f"{SHELLY}/events",
        "method": method,
        "params": {"ts": ts, **change},
    }


STATUS = {
    "id": 0,
    "output": True,
    "apower": 100.0,
    "voltage": 230.1,
    "aenergy": {"total": 500.0, "by_minute": [1666.7, 1666.7, 1666.7], "minute_ts": NOW - 60},
}


def test_notify_status_is_merged_over_the_last_status() -> None:
    profile = ShellyGen2(SHELLY)
    decoder = Decoder(profile)
    decode(decoder, f"{SHELLY}/status/switch:0", STATUS)

    change = {"switch:0": {"id": 0, "aenergy": {"minute_ts": NOW, "total": 501.667}}}
    readings = decode(decoder, f"{SHELLY}/events/rpc", notify(NOW + 0.05, change))

    assert readings == [Reading("energy", NOW, 501.667), Reading("power", NOW + 0.05, 100.0)]
    assert profile.state["aenergy"]["by_minute"] == [1666.7, 1666.7, 1666.7]  # not in the change
    assert profile.state["voltage"] == 230.1


def test_notify_status_before_any_status_uses_what_it_carries() -> None:
    decoder = Decoder(ShellyGen2(SHELLY))
    only_power = notify(NOW, {"switch:0": {"id": 0, "apower": 42.0}})
    assert decode(decoder, f"{SHELLY}/events/rpc", only_power) == [Reading("power", NOW, 42.0)]


def test_notify_full_status_replaces_the_state() -> None:
    profile = ShellyGen2(SHELLY)
    decoder = Decoder(profile)
    decode(decoder, f"{SHELLY}/status/switch:0", {**STATUS, "timer_duration": 60})
    full = {"switch:0": {"id": 0, "apower": 7.0}, "sys": {"uptime": 12}}
    decode(decoder, f"{SHELLY}/events/rpc", notify(NOW, full, method="NotifyFullStatus"))
    assert profile.state == {"id": 0, "apower": 7.0}


@pytest.mark.parametrize(
    "document",
    [
        notify(NOW, {"wifi": {"rssi": -61}}),
        notify(NOW, {"switch:1": {"id": 1, "apower": 5.0}}),
        {"src": SHELLY, "method": "NotifyEvent", "params": {"ts": NOW, "events": []}},
        {"id": 7, "src": SHELLY, "result": {"was_on": True}},  # an RPC response
        {"method": "NotifyStatus", "params": ["not", "an", "object"]},
        "online",
        [1, 2, 3],
    ],
)
def test_shelly_frames_about_something_else_give_nothing(document: object) -> None:
    profile = ShellyGen2(SHELLY)
    decoder = Decoder(profile)
    decode(decoder, f"{SHELLY}/status/switch:0", STATUS)
    before = dict(profile.state)
    assert decode(decoder, f"{SHELLY}/events/rpc", document, received_at=NOW + 1) == []
    assert profile.state == before


def test_shelly_without_minute_ts_stamps_energy_with_the_frame_time() -> None:
    decoder = Decoder(ShellyGen2(SHELLY))
    change = {"switch:0": {"id": 0, "aenergy": {"total": 12.5}}}
    readings = decode(decoder, f"{SHELLY}/events/rpc", notify(NOW + 3.25, change))
    assert readings == [Reading("energy", NOW + 3.25, 12.5)]


def test_deep_merge_overlays_objects_and_removes_null_keys() -> None:
    base = {"a": 1, "b": {"x": 1, "y": [1, 2]}, "t": 5}
    change = {"b": {"y": [3], "z": 2}, "t": None, "n": None, "c": {"k": 1}}
    merged = deep_merge(base, change)
    assert merged == {"a": 1, "b": {"x": 1, "y": [3], "z": 2}, "c": {"k": 1}}
    assert base == {"a": 1, "b": {"x": 1, "y": [1, 2]}, "t": 5}  # untouched


json_leaf = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.booleans())
json_tree = st.recursive(
    json_leaf, lambda inner: st.dictionaries(st.text(max_size=3), inner, max_size=4), max_leaves=12
)
trees = st.dictionaries(st.text(max_size=3), json_tree, max_size=5)


@given(trees, trees)
def test_deep_merge_takes_every_leaf_of_the_change(
    base: dict[str, Any], change: dict[str, Any]
) -> None:
    merged = deep_merge(base, change)

    def leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                out.update(leaves(value, (*prefix, key)))
            elif not isinstance(value, dict):
                out[(*prefix, key)] = value
        return out

    merged_leaves = leaves(merged)
    for path, value in leaves(change).items():
        assert merged_leaves[path] == value
    assert set(merged) >= set(change)


# -- Tasmota --------------------------------------------------------------------------------------


def test_tasmota_pow_r2_recording_gives_kwh_at_receive_time() -> None:
    decoder = Decoder(Tasmota("sonoff-pow-kitchen"))
    readings = replay(decoder, recording("tasmota-pow-r2.txt"))
    assert series(readings, "energy") == [
        (1700000300.231266, 1234.567),
        (1700000600.219588, 1234.576),
        (1700000900.224471, 1234.577),
    ]
    assert series(readings, "power") == [
        (1700000300.231266, 112.0),
        (1700000600.219588, 112.0),
        (1700000900.224471, 0.0),
    ]
    assert [c.unit for c in decoder.profile.channels] == [Unit.KWH, Unit.W]


def test_tasmota_arrays_are_picked_with_index() -> None:
    readings = replay(Decoder(Tasmota("shelly25-hall", index=1)), recording("tasmota-shelly25.txt"))
    assert series(readings, "energy") == [(1700000600.0, 2.146), (1700000900.0, 2.152)]
    assert series(readings, "power") == [
        (1700000300.118201, 67.0),  # naive Time: receive time
        (1700000600.0, 67.0),  # Time with offset (SetOption52 1): the device's time
        (1700000900.0, 66.0),
    ]
    first = replay(Decoder(Tasmota("shelly25-hall", index=0)), recording("tasmota-shelly25.txt"))
    assert series(first, "energy") == [(1700000600.0, 1.118), (1700000900.0, 1.118)]


def test_tasmota_consolidated_total_on_a_multichannel_device_is_not_taken() -> None:
    record = recording("tasmota-shelly25.txt")[0]
    decoded = Decoder(Tasmota("shelly25-hall", index=1)).decode(
        record.topic, record.payload, received_at=record.received_at
    )
    assert [r.channel for r in decoded.readings] == ["power"]
    assert decoded.note is not None
    assert "SetOption129" in decoded.note


def test_tasmota_index_beyond_the_arrays_gives_nothing_and_says_why() -> None:
    record = recording("tasmota-shelly25.txt")[3]
    decoded = Decoder(Tasmota("shelly25-hall", index=2)).decode(
        record.topic, record.payload, received_at=record.received_at
    )
    assert decoded.readings == []
    assert decoded.note == "index 2 is not in ENERGY.Total (length 2)"


def test_tasmota_index_on_a_single_channel_device_gives_nothing() -> None:
    decoder = Decoder(Tasmota("plug", index=1))
    payload = {"Time": "2023-11-14T23:25:00", "ENERGY": {"Total": 1.5, "Power": 10}}
    assert decode(decoder, "tele/plug/SENSOR", payload) == []


@pytest.mark.parametrize(
    ("time", "expected_at"),
    [
        ("2023-11-14T23:13:20", NOW + 0.2),  # local time without offset: not trusted
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T22:13:20Z", NOW),
        ("1970-01-01T00:12:07+00:00", NOW + 0.2),  # clock not set yet
        (1700000000, NOW + 0.2),
    ],
)
def test_tasmota_time_is_used_only_with_an_offset(time: object, expected_at: float) -> None:
    decoder = Decoder(Tasmota("plug"))
    payload = {"Time": time, "ENERGY": {"Total": 1.5}}
    readings = decode(decoder, "tele/plug/SENSOR", payload, received_at=NOW + 0.2)
    assert readings == [Reading("energy", expected_at, 1.5)]


# -- Zigbee2MQTT ----------------------------------------------------------------------------------


def test_zigbee2mqtt_recording_gives_kwh_and_w() -> None:
    profile = Zigbee2Mqtt("kitchen/kettle-plug")
    readings = replay(Decoder(profile), recording("zigbee2mqtt-ts011f.txt"))
    assert profile.topics == ("zigbee2mqtt/kitchen/kettle-plug",)
    assert series(readings, "energy") == [
        (1700001010.212447, 12.05),
        (1700001070.388015, 12.05),
        (1700001130.40129, 12.08),
        (1700001131.017733, 12.08),
        (1700001190.422815, 12.11),
    ]
    assert [v for _, v in series(readings, "power")] == [0.0, 1980.0, 1975.0, 1975.0, 0.0]


def test_zigbee2mqtt_last_seen_is_the_timestamp_and_makes_redelivery_a_repeat() -> None:
    decoder = Decoder(Zigbee2Mqtt("office-heater"))
    readings = replay(decoder, recording("zigbee2mqtt-last-seen.txt"))
    assert series(readings, "energy") == [
        (1700001950.0, 40.21),  # retained, but stamped by the bridge: kept
        (1700002010.0, 40.22),
        (1700002070.0, 40.24),  # the redelivered copy of 40.22 gave nothing
    ]


@pytest.mark.parametrize(
    ("last_seen", "expected_at"),
    [(1700000000123, 1700000000.123), ("2023-11-14T22:13:20.000Z", NOW), ("garbage", NOW + 1)],
)
def test_zigbee2mqtt_last_seen_forms(last_seen: object, expected_at: float) -> None:
    decoder = Decoder(Zigbee2Mqtt("plug", base_topic="z2m"))
    payload = {"energy": 3.5, "last_seen": last_seen}
    assert decode(decoder, "z2m/plug", payload, received_at=NOW + 1) == [
        Reading("energy", expected_at, 3.5)
    ]


# -- generic JSON paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "document", "value"),
    [
        ("ENERGY.Total", {"ENERGY": {"Total": 12.5}}, 12.5),
        ("ENERGY.Total[1]", {"ENERGY": {"Total": [1.0, 2.0]}}, 2.0),
        ("aenergy.total", {"aenergy": {"total": 3}}, 3.0),
        ("$.a.b[0]", {"a": {"b": [7.5, 1]}}, 7.5),
        ("$['switch:0'].apower", {"switch:0": {"apower": 9}}, 9.0),
        ('$["a.b"]', {"a.b": 4}, 4.0),
        ("switch:0.apower", {"switch:0": {"apower": 9}}, 9.0),
        ("$", 17.25, 17.25),
        ("$.value", {"value": "230.5"}, 230.5),
        ("$[0][1]", [[0, 5]], 5.0),
    ],
)
def test_generic_channel_reads_its_path(path: str, document: object, value: float) -> None:
    spec = ChannelSpec(topic="meter/1", path=path, unit=Unit.KWH)
    decoder = Decoder(Generic({"energy": spec}))
    assert decode(decoder, "meter/1", document) == [Reading("energy", NOW, value)]


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("ENERGY.Total", {"ENERGY": {}}),
        ("ENERGY.Total", {"ENERGY": [1, 2]}),
        ("a[3]", {"a": [1]}),
        ("a", {"a": True}),
        ("a", {"a": None}),
        ("a", {"a": "n/a"}),
        ("a", {"a": "NaN"}),
        ("a", {"a": {"b": 1}}),
        ("$", "online"),
    ],
)
def test_generic_without_the_value_is_skipped(path: str, document: object) -> None:
    spec = ChannelSpec(topic="meter/1", path=path, unit=Unit.W)
    assert decode(Decoder(Generic({"power": spec})), "meter/1", document) == []


def test_generic_channels_share_a_topic_and_ignore_others() -> None:
    profile = Generic(
        {
            "energy": ChannelSpec(topic="t/SENSOR", path="ENERGY.Total", unit=Unit.KWH),
            "power": ChannelSpec(topic="t/SENSOR", path="ENERGY.Power", unit=Unit.W),
            "grid": ChannelSpec(topic="grid/state", path="$", unit=Unit.WH, wrap=100000.0),
        }
    )
    decoder = Decoder(profile)
    assert profile.topics == ("t/SENSOR", "grid/state")
    assert profile.channels[2] == Channel("grid", ChannelKind.ENERGY, Unit.WH, wrap=100000.0)
    document = {"ENERGY": {"Total": 2.5, "Power": 100}}
    assert decode(decoder, "t/SENSOR", document) == [
        Reading("energy", NOW, 2.5),
        Reading("power", NOW, 100.0),
    ]
    assert decode(decoder, "t/other", document) == []


@pytest.mark.parametrize(
    "path", ["", "  ", "a..b", "$a", "a[", "a[x]", "a['b]", ".a", "a.", "a[-1]", "$.", "a]"]
)
def test_jsonpath_rejects_what_it_cannot_read(path: str) -> None:
    with pytest.raises(ValueError):
        JsonPath.parse(path)


def test_jsonpath_missing_is_distinct_from_null() -> None:
    assert JsonPath.parse("a").find({"a": None}) is None
    assert JsonPath.parse("a").find({}) is MISSING
    assert repr(MISSING) == "MISSING"
    assert str(JsonPath.parse(" $.a ")) == " $.a "


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (2.5, 2.5),
        ("3.25", 3.25),
        (True, None),
        (None, None),
        ("x", None),
        (math.inf, None),
        ("nan", None),
        (10**400, None),
        ([1], None),
    ],
)
def test_number(value: object, expected: float | None) -> None:
    assert number(value) == expected


# -- the decoder: JSON, timestamps, repeats -------------------------------------------------------


def test_malformed_json_is_reported_not_raised() -> None:
    decoder = Decoder(Tasmota("plug"))
    for payload in (b'{"ENERGY":{"Total":1.5', b"\xff\xfe{}", b"{'a': 1}", b"ON OFF"):
        decoded = decoder.decode("tele/plug/SENSOR", payload, received_at=NOW)
        assert decoded.malformed, payload
        assert decoded.readings == []


def test_an_empty_payload_is_not_malformed() -> None:
    decoded = Decoder(Tasmota("plug")).decode("tele/plug/SENSOR", b"", received_at=NOW)
    assert decoded.malformed is None
    assert decoded.readings == []


@pytest.mark.parametrize(
    ("topic", "document"),
    [
        ("tele/plug/SENSOR", {"Time": "2023-11-14T23:25:00", "DS18B20": {"Temperature": 21.5}}),
        ("tele/plug/SENSOR", {"ENERGY": {"Voltage": 230}}),
        ("tele/plug/SENSOR", ["ENERGY"]),
        ("tele/plug/STATE", {"ENERGY": {"Total": 1.0}}),
        ("zigbee2mqtt/plug", {"state": "ON", "linkquality": 40}),
        ("zigbee2mqtt/plug", {"energy": None, "power": "unavailable"}),
        (f"{SHELLY}/status/switch:0", {"id": 0, "output": False, "temperature": {"tC": 40}}),
        (f"{SHELLY}/status/switch:0", {"id": 0, "aenergy": {"by_minute": [0, 0, 0]}}),
    ],
)
def test_a_message_without_the_value_gives_no_reading(topic: str, document: object) -> None:
    for profile in (Tasmota("plug"), Zigbee2Mqtt("plug"), ShellyGen2(SHELLY)):
        decoded = Decoder(profile).decode(topic, msgspec.json.encode(document), received_at=NOW)
        assert decoded.readings == []
        assert decoded.malformed is None


class ListProfile:
    """Test profile: the payload is a JSON list of [channel, device_at|null, value]."""

    topics = ("t",)
    channels = (Channel("energy", ChannelKind.ENERGY, Unit.WH),)

    def decode(self, topic: str, document: object) -> Found:
        assert isinstance(document, list)
        return Found(tuple(Sample(c, v, at) for c, at, v in document))


def feed(
    decoder: Decoder, *samples: tuple[str, float | None, float], **kwargs: Any
) -> list[Reading]:
    kwargs.setdefault("received_at", NOW)
    return decoder.decode("t", msgspec.json.encode(list(samples)), **kwargs).readings


def test_retained_samples_need_a_device_timestamp() -> None:
    decoder = Decoder(ListProfile())
    assert feed(decoder, ("energy", None, 1.0), retained=True) == []
    assert feed(decoder, ("energy", NOW - 600, 1.0), retained=True) == [
        Reading("energy", NOW - 600, 1.0)
    ]
    assert feed(decoder, ("energy", None, 2.0)) == [Reading("energy", NOW, 2.0)]


def test_implausible_device_timestamps_give_way_to_receive_time() -> None:
    decoder = Decoder(ListProfile(), max_ahead=300.0)
    assert feed(decoder, ("energy", 12.0, 1.0)) == [Reading("energy", NOW, 1.0)]
    later = NOW + 10
    assert feed(decoder, ("energy", later + 301, 2.0), received_at=later) == [
        Reading("energy", later, 2.0)
    ]
    assert feed(decoder, ("energy", later + 299, 3.0), received_at=later) == [
        Reading("energy", later + 299, 3.0)
    ]


def test_repeats_and_stale_samples_are_dropped_per_channel() -> None:
    decoder = Decoder(ListProfile())
    assert len(feed(decoder, ("energy", NOW, 1.0), ("power", NOW, 5.0))) == 2
    assert feed(decoder, ("energy", NOW, 1.0)) == []  # QoS 1 redelivery
    assert feed(decoder, ("energy", NOW - 60, 0.5)) == []  # older than the last reading
    assert feed(decoder, ("energy", NOW, 1.5)) == [
        Reading("energy", NOW, 1.5)
    ]  # same time, new value
    assert feed(decoder, ("power", NOW + 1, 5.0)) == [Reading("power", NOW + 1, 5.0)]


samples = st.lists(
    st.tuples(
        st.sampled_from(["energy", "power"]),
        st.integers(min_value=0, max_value=20).map(lambda i: NOW - 60 * i),
        st.integers(min_value=0, max_value=5).map(float),
    ),
    max_size=40,
)


@given(samples, st.integers(min_value=1, max_value=5))
def test_per_channel_readings_never_go_back_in_time_nor_repeat(
    messages: list[tuple[str, float, float]], batch: int
) -> None:
    decoder = Decoder(ListProfile())
    emitted = []
    for start in range(0, len(messages), batch):
        emitted += feed(decoder, *messages[start : start + batch])
    for channel in ("energy", "power"):
        mine = [(r.at, r.value) for r in emitted if r.channel == channel]
        assert [at for at, _ in mine] == sorted(at for at, _ in mine)
        assert len(set(mine)) == len(mine)


@given(samples)
def test_in_order_samples_with_duplicates_are_each_emitted_once(
    messages: list[tuple[str, float, float]],
) -> None:
    ordered = sorted(messages, key=lambda s: s[1])
    redelivered = [m for m in ordered for _ in range(2)]  # every message twice, in order
    decoder = Decoder(ListProfile())
    emitted = [r for m in redelivered for r in feed(decoder, m)]
    assert sorted((r.channel, r.at, r.value) for r in emitted) == sorted(set(ordered))


def test_build_profile_follows_the_config() -> None:
    def profile_of(**table: object) -> Profile:
        config = msgspec.convert({"type": "mqtt", "url": "mqtt://h", **table}, MqttConfig)
        return build_profile(config)

    shelly = profile_of(profile="shelly-gen2", device="d", switch=2)
    assert shelly.topics == ("d/status/switch:2", "d/events/rpc")
    assert profile_of(profile="tasmota", device="d").topics == ("tele/d/SENSOR",)
    assert profile_of(profile="zigbee2mqtt", device="a/b", base_topic="zb").topics == ("zb/a/b",)
    generic = profile_of(channels={"e": {"topic": "x/y", "path": "$", "unit": "Wh"}})
    assert isinstance(generic, Generic)
