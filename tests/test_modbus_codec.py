"""The Modbus adapter's pure core: register codec, read planning, SunSpec walk."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.modbus.codec import decode, register_count, scaled, wrapped_delta
from adapters.modbus.points import Block, Point, channel_for, evaluate, plan_blocks
from adapters.modbus.profiles import EASTRON_SDM120, EASTRON_SDM630, generic_profile
from adapters.modbus.sunspec import MARKER, MeterModel, ModelWalk, Request
from gateway.plugin import ChannelKind, Unit
from tests.kit.modbus import SunSpecMeter, modbus_config, words

# --------------------------------------------------------------------------- exact vectors


def test_f32_1234_5_kwh_high_word_first() -> None:
    assert decode([0x449A, 0x5000], "f32") == 1234.5


def test_f32_1234_5_kwh_low_word_first() -> None:
    assert decode([0x5000, 0x449A], "f32", word_order="little") == 1234.5


def test_f32_byte_swapped_words() -> None:
    assert decode([0x9A44, 0x0050], "f32", byte_order="little") == 1234.5
    assert decode([0x0050, 0x9A44], "f32", word_order="little", byte_order="little") == 1234.5


def test_acc32_wrap_gives_512_units_of_increase() -> None:
    before = decode([0xFFFF, 0xFF00], "acc32")
    after = decode([0x0000, 0x0100], "acc32")
    assert before == 0xFFFFFF00
    assert after == 0x00000100
    assert (0x100 + 2**32 - 0xFFFFFF00) == 512
    assert wrapped_delta(0xFFFFFF00, 0x00000100) == 512
    assert wrapped_delta(0xFFFFFF00, 0x00000100, 2**32) == 512


def test_wrapped_delta_without_wrap_is_the_plain_difference() -> None:
    assert wrapped_delta(1000, 1500) == 500
    assert wrapped_delta(7, 7) == 0
    with pytest.raises(ValueError):
        wrapped_delta(1, 2, 0)


def test_signed_and_unsigned_integers() -> None:
    assert decode([0xFFFE], "s16") == -2
    assert decode([0xFFFE], "u16") == 0xFFFE
    assert decode([0xFFFF, 0xFFFE], "s32") == -2
    assert decode([0x0001, 0x0000], "u32") == 65536
    assert decode([0x0000, 0x0001], "u32", word_order="little") == 65536
    assert decode([0, 0, 1, 0], "u64") == 65536


# --------------------------------------------------------------------------- sentinels

SENTINELS = [
    ([0x7FC0, 0x0000], "f32"),  # NaN
    ([0xFFC0, 0x0000], "f32"),  # negative NaN
    ([0x7F80, 0x0000], "f32"),  # +inf
    ([0x7FF8, 0, 0, 0], "f64"),  # NaN
    ([0x8000], "s16"),
    ([0xFFFF], "u16"),
    ([0xFFFF, 0xFFFF], "u32"),
    ([0x8000, 0x0000], "s32"),
    ([0xFFFF] * 4, "u64"),
    ([0x0000, 0x0000], "acc32"),
    ([0x8000], "sunssf"),
    ([0x000B], "sunssf"),  # 11: outside -10..10
]


@pytest.mark.parametrize(("registers", "value_type"), SENTINELS)
def test_not_implemented_sentinels_decode_to_no_value(
    registers: list[int], value_type: str
) -> None:
    assert decode(registers, value_type) is None  # type: ignore[arg-type]


def test_zero_is_a_value_except_for_acc32() -> None:
    assert decode([0, 0], "f32") == 0.0
    assert decode([0], "u16") == 0
    assert decode([0, 0], "u32") == 0
    assert decode([0, 0], "acc32") is None


def test_sunssf_range() -> None:
    assert decode([0xFFF6], "sunssf") == -10
    assert decode([0x000A], "sunssf") == 10


def test_wrong_number_of_registers_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "f32")
    with pytest.raises(ValueError, match="16-bit"):
        decode([0x10000], "u16")


def test_register_counts() -> None:
    counts = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "acc32": 2, "f32": 2, "u64": 4, "f64": 4}
    for value_type, count in counts.items():
        assert register_count(value_type) == count  # type: ignore[arg-type]


def test_scaled_divides_by_exact_powers_of_ten() -> None:
    assert scaled(1234567, -2) == 12345.67
    assert scaled(12, 3) == 12000.0
    assert scaled(5, 0) == 5.0
    assert scaled(2**32, -3) == 4294967.296


# --------------------------------------------------------------------------- round trips

_FMT = {"u16": "H", "s16": "h", "u32": "I", "s32": "i", "u64": "Q", "f32": "f", "f64": "d"}


def _struct_words(fmt: str, value: float, word_order: str, byte_order: str) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    if byte_order == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    regs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return regs[::-1] if word_order == "little" else regs


_VALUES = {
    "u16": st.integers(0, 0xFFFE),
    "s16": st.integers(-0x7FFF, 0x7FFF),
    "u32": st.integers(0, 0xFFFF_FFFE),
    "s32": st.integers(-0x7FFF_FFFF, 0x7FFF_FFFF),
    "u64": st.integers(0, 2**64 - 2),
    "f32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "f64": st.floats(allow_nan=False, allow_infinity=False),
}
_ORDERS = st.sampled_from(["big", "little"])


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[str, float]:
    value_type = draw(st.sampled_from(sorted(_VALUES)))
    return value_type, draw(_VALUES[value_type])


@given(typed_values(), _ORDERS, _ORDERS)
def test_round_trip_every_type_and_order(
    typed: tuple[str, float], word_order: str, byte_order: str
) -> None:
    value_type, value = typed
    registers = _struct_words(_FMT[value_type], value, word_order, byte_order)
    assert len(registers) == register_count(value_type)  # type: ignore[arg-type]
    decoded = decode(registers, value_type, word_order, byte_order)  # type: ignore[arg-type]
    assert decoded == value
    if value_type.startswith("f"):
        assert math.copysign(1.0, decoded) == math.copysign(1.0, value)  # type: ignore[arg-type]


@given(_VALUES["f32"], _ORDERS, _ORDERS)
def test_kit_encoder_agrees_with_struct(value: float, word_order: str, byte_order: str) -> None:
    assert words(value, "f32", word_order, byte_order) == _struct_words(
        "f", value, word_order, byte_order
    )


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_wrapped_delta_is_never_negative_and_undoes_addition(previous: int, step: int) -> None:
    current = (previous + step) % 2**32
    delta = wrapped_delta(previous, current)
    assert 0 <= delta < 2**32
    assert delta == step


# --------------------------------------------------------------------------- read planning


def _point(channel: str, address: int, value_type: str = "f32", **kw: object) -> Point:
    return Point(
        channel,
        kw.pop("kind", ChannelKind.ENERGY),  # type: ignore[arg-type]
        kw.pop("unit", Unit.KWH),  # type: ignore[arg-type]
        kw.pop("function", "input"),  # type: ignore[arg-type]
        address,
        value_type,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_eastron_sdm630_needs_two_requests() -> None:
    assert plan_blocks(EASTRON_SDM630.points) == [
        Block("input", 0x0034, 2),
        Block("input", 0x0048, 4),
    ]


def test_eastron_sdm120_addresses() -> None:
    by_channel = {p.channel: p for p in EASTRON_SDM120.points}
    assert by_channel["energy"].address == 0x0048
    assert by_channel["export_energy"].address == 0x004A
    assert by_channel["power"].address == 0x000C
    assert {p.function for p in EASTRON_SDM120.points} == {"input"}
    assert {p.type for p in EASTRON_SDM120.points} == {"f32"}


def test_plan_merges_touching_and_overlapping_ranges_per_function() -> None:
    points = [
        _point("a", 10),
        _point("b", 12),
        _point("c", 13),
        _point("d", 10, function="holding"),
        _point("e", 20),
    ]
    assert plan_blocks(points) == [
        Block("holding", 10, 2),
        Block("input", 10, 5),
        Block("input", 20, 2),
    ]
    assert plan_blocks(points, max_gap=6) == [Block("holding", 10, 2), Block("input", 10, 12)]


def test_plan_respects_the_request_size_limit() -> None:
    points = [_point(f"p{i}", 2 * i) for i in range(100)]
    blocks = plan_blocks(points)
    assert [b.count for b in blocks] == [124, 76]
    assert all(b.count <= 125 for b in blocks)


def test_plan_includes_scale_registers() -> None:
    points = [_point("e", 100, "u32", scale_register=110, unit=Unit.WH)]
    assert plan_blocks(points) == [Block("input", 100, 2), Block("input", 110, 1)]
    assert plan_blocks(points, max_gap=8) == [Block("input", 100, 11)]


def test_evaluate_scales_and_skips_sentinels() -> None:
    points = [
        _point("energy", 0, "u32", scale=0.01),
        _point("nan", 2),
        _point("power", 4, "s16", kind=ChannelKind.POWER, unit=Unit.W, scale_register=5),
    ]
    registers = [*words(123456, "u32"), 0x7FC0, 0x0000, *words(-1234, "s16"), *words(-1, "s16")]
    result = evaluate(points, {Block("input", 0, 6): (registers, 1700000000.5)})
    assert [(r.channel, r.value, r.at) for r in result.readings] == [
        ("energy", 1234.56, 1700000000.5),
        ("power", -123.4, 1700000000.5),
    ]
    assert result.exponents == {"power": -1}


def test_evaluate_unimplemented_scale_factor_gives_no_reading() -> None:
    point = _point("energy", 0, "acc32", unit=Unit.WH, scale_register=2)
    result = evaluate([point], {Block("input", 0, 3): ([0, 500, 0x8000], 1.0)})
    assert result.readings == []


def test_evaluate_uses_the_arrival_time_of_each_block() -> None:
    points = [_point("a", 0), _point("b", 50)]
    answers = {
        Block("input", 0, 2): (words(1.0, "f32"), 10.0),
        Block("input", 50, 2): (words(2.0, "f32"), 11.0),
    }
    assert [(r.channel, r.at) for r in evaluate(points, answers).readings] == [
        ("a", 10.0),
        ("b", 11.0),
    ]


def test_channel_wrap_is_the_raw_modulus_times_the_scale() -> None:
    fixed = _point("e", 0, "u32", scale=0.01, wrap=2**32)
    assert channel_for(fixed).wrap == pytest.approx(42949672.96)
    by_register = _point("e", 0, "acc32", unit=Unit.WH, scale_register=2, wrap=2**32)
    assert channel_for(by_register).wrap is None  # not known before the exponent is read
    assert channel_for(by_register, 3).wrap == 2**32 * 1000
    assert channel_for(by_register, 0).wrap == 2**32


def test_generic_profile_from_config() -> None:
    config = modbus_config(
        host="h",
        registers={
            "energy": {
                "address": 100,
                "function": "holding",
                "type": "u32",
                "word_order": "little",
                "scale": 0.01,
                "unit": "kWh",
                "wrap": 2**32,
            },
            "power": {
                "address": 200,
                "function": "holding",
                "type": "s16",
                "scale_register": 201,
                "kind": "power",
                "unit": "W",
            },
        },
    )
    energy, power = generic_profile(config.registers).points
    assert energy == Point(
        channel="energy",
        kind=ChannelKind.ENERGY,
        unit=Unit.KWH,
        function="holding",
        address=100,
        type="u32",
        word_order="little",
        scale=0.01,
        wrap=2**32,
    )
    assert power.scale_register == 201
    assert power.kind is ChannelKind.POWER


# --------------------------------------------------------------------------- SunSpec walk


def _walk(holding: dict[int, int], **kw: object) -> tuple[ModelWalk, list[Request]]:
    """Run the walk against a register space; missing registers answer 'illegal address'."""
    walk = ModelWalk(**kw)  # type: ignore[arg-type]
    seen: list[Request] = []
    while (request := walk.request) is not None:
        seen.append(request)
        span = range(request.address, request.address + request.count)
        walk.feed([holding[a] for a in span] if all(a in holding for a in span) else None)
    return walk, seen


def test_walk_finds_model_203_after_the_common_model() -> None:
    meter = SunSpecMeter(model_id=203)
    walk, seen = _walk(meter.holding)
    assert walk.meter == MeterModel(203, 40070, 105)
    assert seen == [Request(40000, 4), Request(40070, 2)]


def test_walk_skips_other_models() -> None:
    meter = SunSpecMeter(model_id=213, fillers=[(101, 50), (120, 26)])
    walk, seen = _walk(meter.holding)
    assert walk.meter == MeterModel(213, 40070 + 52 + 28, 124)
    assert len(seen) == 4


@pytest.mark.parametrize("base", [0, 50000])
def test_walk_tries_the_other_bases(base: int) -> None:
    meter = SunSpecMeter(base=base, model_id=201)
    walk, _ = _walk(meter.holding)
    assert walk.meter == MeterModel(201, base + 70, 105)


def test_walk_ignores_a_base_without_the_marker() -> None:
    meter = SunSpecMeter(base=50000)
    holding = dict(meter.holding)
    holding.update({40000 + i: 0x1234 for i in range(4)})
    walk, _ = _walk(holding)
    assert walk.meter is not None
    assert walk.meter.address == 50070


def test_walk_without_a_meter_ends_at_the_end_marker() -> None:
    holding = {40000: MARKER[0], 40001: MARKER[1], 40002: 1, 40003: 2, 40004: 0, 40005: 0}
    holding.update({40006: 0xFFFF, 40007: 0})
    walk, _ = _walk(holding)
    assert walk.meter is None
    assert "without a meter model" in walk.failure


def test_walk_without_sunspec_fails_after_every_base() -> None:
    walk, seen = _walk({})
    assert walk.meter is None
    assert [r.address for r in seen] == [40000, 0, 50000]
    assert "no SunSpec marker" in walk.failure


def test_walk_rejects_a_truncated_meter_model() -> None:
    holding = {40000: MARKER[0], 40001: MARKER[1], 40002: 203, 40003: 20}
    walk, _ = _walk(holding)
    assert walk.meter is None
    assert "too short" in walk.failure


def test_walk_gives_up_on_an_endless_chain() -> None:
    holding = {40000: MARKER[0], 40001: MARKER[1]}
    for address in range(40002, 40400, 2):
        holding[address], holding[address + 1] = 64000, 0
    walk, seen = _walk(holding, max_models=10)
    assert walk.meter is None
    assert len(seen) == 10


def test_walk_refuses_feeding_after_the_end() -> None:
    walk, _ = _walk(SunSpecMeter().holding)
    with pytest.raises(RuntimeError):
        walk.feed([0, 0])


def test_int_meter_points_match_the_sunspec_offsets() -> None:
    # SolarEdge documents meter model 203 at 40188 (1-based) with W at 40206, W_SF at 40210,
    # TotWhExp at 40226, TotWhImp at 40234 and TotWh_SF at 40242.
    model = MeterModel(203, 40188 - 1, 105)
    points = {p.channel: p for p in model.points()}
    assert points["power"].address + 1 == 40206
    assert points["power"].scale_register is not None
    assert points["power"].scale_register + 1 == 40210
    assert points["export_energy"].address + 1 == 40226
    assert points["energy"].address + 1 == 40234
    assert points["energy"].scale_register is not None
    assert points["energy"].scale_register + 1 == 40242
    assert points["energy"].type == "acc32"
    assert points["energy"].wrap == 2**32
    assert points["energy"].unit is Unit.WH
    assert {p.function for p in points.values()} == {"holding"}


def test_float_meter_points_match_the_sunspec_offsets() -> None:
    points = {p.channel: p for p in MeterModel(213, 1000, 124).points()}
    assert points["power"].address == 1028
    assert points["export_energy"].address == 1060
    assert points["energy"].address == 1068
    assert {p.type for p in points.values()} == {"f32"}
    assert all(p.scale_register is None and p.wrap is None for p in points.values())


def test_sunspec_meter_points_read_in_one_request() -> None:
    points = MeterModel(203, 40070, 105).points()
    assert plan_blocks(points, max_gap=64) == [Block("holding", 40088, 37)]
