"""Compaction survives absurd power samples: one glitch is a break, not the end of the series."""

from __future__ import annotations

import math

import pytest

from gateway.metering.compaction import (
    ABSURD_KW,
    COMPACTED_MAX_GAP,
    compact_power,
    power_handover,
)
from gateway.metering.energy import counter_intervals, power_intervals

T0 = 1_700_000_040.0  # a whole minute


def two_kw(glitch: float, at: int = 95) -> list[tuple[float, float]]:
    samples = [(T0 + 10.0 * i, 2.0) for i in range(400)]
    samples[at] = (samples[at][0], glitch)
    return samples


@pytest.mark.parametrize("glitch", [1e308, -1e308, 1.5e300, -5e9, math.inf, math.nan])
def test_an_absurd_sample_is_a_break_and_later_minutes_keep_their_energy(glitch: float) -> None:
    samples = two_kw(glitch)
    before = T0 + 3600.0
    compacted = compact_power(samples, to_kw=1.0, max_gap=60.0, before=before)
    assert all(math.isnan(v) or math.isfinite(v) for _, v in compacted)
    later = [(T0 + 1800.0, T0 + 2700.0), (T0 + 2700.0, T0 + 3540.0)]
    read_back = counter_intervals(
        compacted, later, to_kwh=1.0, wrap=None, max_gap=COMPACTED_MAX_GAP
    )
    raw = power_intervals(samples, later, to_kw=1.0, max_gap=60.0)
    for got, want in zip(read_back, raw, strict=True):
        assert got is not None and want is not None
        assert got.kwh == pytest.approx(want.kwh)
    around = [(T0 + 900.0, T0 + 1020.0)]  # the minutes either side of the glitch at 950 s
    assert counter_intervals(
        compacted, around, to_kwh=1.0, wrap=None, max_gap=COMPACTED_MAX_GAP
    ) == [None]
    handover = power_handover(samples, to_kw=1.0, max_gap=60.0, before=before)
    assert handover is not None and math.isfinite(handover[1])


def test_the_threshold_is_in_kilowatts() -> None:
    watts = [(T0 + 10.0 * i, ABSURD_KW * 1000 * 0.5) for i in range(20)]  # 5 GW, in W
    compacted = compact_power(watts, to_kw=0.001, max_gap=60.0, before=T0 + 180.0)
    assert compacted and not any(math.isnan(v) for _, v in compacted)


def test_a_plain_negative_power_still_cannot_be_compacted() -> None:
    with pytest.raises(ValueError, match="negative"):
        compact_power(two_kw(-3.0), to_kw=1.0, max_gap=60.0, before=T0 + 3600.0)
