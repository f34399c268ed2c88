"""SunSpec discovery as a pure state machine: it asks for reads, you feed it the answers.

A SunSpec device has the marker ``SunS`` (0x5375 0x6E53) in two holding
registers at a base address (40000, 0 or 50000, tried in that order), then a
chain of models, each a header ``(ID, L)`` followed by ``L`` registers, ending
with ID 0xFFFF. We walk it to the first meter model:

* 201-204 (single/split/wye/delta meter, integer + scale factor), and
* 211-214 (the same meters, float32 points).

Point offsets below are counted from the model's ``ID`` register (offset 0,
``L`` at 1). Source: the SunSpec Alliance model definitions,
https://github.com/sunspec/models ``json/model_201.json`` .. ``model_204.json``
and ``model_211.json`` .. ``model_214.json`` (every model of a family has the
same points in the same order; only mandatory flags differ). Model 203::

    0 ID, 1 L, 2 A, 3 AphA, 4 AphB, 5 AphC, 6 A_SF, 7 PhV, 8 PhVphA, 9 PhVphB,
    10 PhVphC, 11 PPV, 12 PPVphAB, 13 PPVphBC, 14 PPVphCA, 15 V_SF, 16 Hz,
    17 Hz_SF, 18 W, 19 WphA, 20 WphB, 21 WphC, 22 W_SF, 23 VA .. 27 VA_SF,
    28 VAR .. 32 VAR_SF, 33 PF .. 37 PF_SF, 38 TotWhExp (acc32, 2 regs),
    40/42/44 TotWhExpPhA/B/C, 46 TotWhImp (acc32), 48/50/52 TotWhImpPhA/B/C,
    54 TotWh_SF, ...  (L = 105)

Model 213 (float32, two registers each, no scale factors)::

    0 ID, 1 L, 2 A, 4 AphA, 6 AphB, 8 AphC, 10 PhV, 12 PhVphA, 14 PhVphB,
    16 PhVphC, 18 PPV, 20 PPVphAB, 22 PPVphBC, 24 PPVphCA, 26 Hz, 28 W,
    30/32/34 WphA/B/C, 36 VA .. 44 VAR .. 52 PF .. 60 TotWhExp, 62/64/66 per
    phase, 68 TotWhImp, ...  (L = 124)

(Cross-check: SolarEdge's meter documentation puts model 203 at 40188 (1-based)
with W at 40206, W_SF 40210, TotWhExp 40226, TotWhImp 40234, TotWh_SF 40242:
offsets 18, 22, 38, 46, 54.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adapters.modbus.codec import ACC32_MODULUS
from adapters.modbus.points import Point
from gateway import ChannelKind, Unit

__all__ = [
    "BASES",
    "FLOAT_METERS",
    "INT_METERS",
    "MARKER",
    "MeterModel",
    "ModelWalk",
    "Request",
]

MARKER = (0x5375, 0x6E53)  # "SunS"
BASES = (40000, 0, 50000)
END_ID = 0xFFFF
INT_METERS = range(201, 205)
FLOAT_METERS = range(211, 215)

# Offsets from the model's ID register; see the module docstring.
_INT_W, _INT_W_SF, _INT_WH_EXP, _INT_WH_IMP, _INT_WH_SF = 18, 22, 38, 46, 54
_FLOAT_W, _FLOAT_WH_EXP, _FLOAT_WH_IMP = 28, 60, 68


@dataclass(frozen=True, slots=True)
class Request:
    """Read ``count`` holding registers from ``address``."""

    address: int
    count: int


@dataclass(frozen=True, slots=True)
class MeterModel:
    """A meter model found in the chain: its ID, the address of its ID register, its L."""

    model_id: int
    address: int
    length: int

    @property
    def is_float(self) -> bool:
        return self.model_id in FLOAT_METERS

    def points(self) -> tuple[Point, ...]:
        """energy (TotWhImp), export_energy (TotWhExp) and power (W) of this model."""
        a = self.address
        if self.is_float:
            energy, power = (ChannelKind.ENERGY, Unit.WH), (ChannelKind.POWER, Unit.W)
            return (
                Point("energy", *energy, "holding", a + _FLOAT_WH_IMP, "f32"),
                Point("export_energy", *energy, "holding", a + _FLOAT_WH_EXP, "f32"),
                Point("power", *power, "holding", a + _FLOAT_W, "f32"),
            )

        def acc32(channel: str, offset: int) -> Point:
            return Point(
                channel,
                ChannelKind.ENERGY,
                Unit.WH,
                "holding",
                a + offset,
                "acc32",
                scale_register=a + _INT_WH_SF,
                wrap=ACC32_MODULUS,
            )

        return (
            acc32("energy", _INT_WH_IMP),
            acc32("export_energy", _INT_WH_EXP),
            Point(
                "power",
                ChannelKind.POWER,
                Unit.W,
                "holding",
                a + _INT_W,
                "s16",
                scale_register=a + _INT_W_SF,
            ),
        )


def _needed_length(model_id: int) -> int:
    """The smallest L that still holds every point we read (the body is offsets 2..L+1)."""
    last_offset = _FLOAT_WH_IMP + 1 if model_id in FLOAT_METERS else _INT_WH_SF
    return last_offset - 1


class ModelWalk:
    """Find the first meter model. Loop: ``request`` -> read -> ``feed(registers)``.

    Feed ``None`` when the device answered the read with a Modbus exception
    (e.g. illegal address): at a base that means "no SunSpec here, try the
    next base". Connection failures are the caller's business: abandon the walk.
    When ``request`` is None the walk is over: ``meter`` is the result, or
    ``None`` with ``failure`` saying why.
    """

    def __init__(self, bases: Sequence[int] = BASES, max_models: int = 64) -> None:
        self._bases = list(bases)
        self._all_bases = tuple(bases)
        self._max_models = max_models
        self._models_seen = 0
        self._at_base = True
        self.meter: MeterModel | None = None
        self.failure = ""
        self.request: Request | None = None
        self._next_base()

    def _next_base(self) -> None:
        if not self._bases:
            self._finish(f"no SunSpec marker 'SunS' at any base address {list(self._all_bases)}")
            return
        self._at_base = True
        # The marker and the first model's header in one read.
        self.request = Request(self._bases.pop(0), 4)

    def _finish(self, failure: str = "") -> None:
        self.request = None
        self.failure = failure

    def feed(self, registers: Sequence[int] | None) -> None:
        request = self.request
        if request is None:
            raise RuntimeError("the walk is over; nothing was requested")
        if registers is not None and len(registers) != request.count:
            raise ValueError(f"expected {request.count} registers, got {len(registers)}")
        if self._at_base:
            if registers is None or tuple(registers[:2]) != MARKER:
                self._next_base()
                return
            self._at_base = False
            self._header(request.address + 2, registers[2], registers[3])
        elif registers is None:
            self._finish(f"the device refused to read the model header at {request.address}")
        else:
            self._header(request.address, registers[0], registers[1])

    def _header(self, address: int, model_id: int, length: int) -> None:
        if model_id == END_ID:
            self._finish("the SunSpec model chain ends without a meter model (201-204, 211-214)")
            return
        if model_id in INT_METERS or model_id in FLOAT_METERS:
            if length < _needed_length(model_id):
                self._finish(f"meter model {model_id} at {address} is too short (L={length})")
                return
            self.meter = MeterModel(model_id, address, length)
            self._finish()
            return
        self._models_seen += 1
        following = address + 2 + length
        if self._models_seen >= self._max_models or following + 2 > 0x10000:
            self._finish(f"gave up walking the SunSpec model chain at {address}")
            return
        self.request = Request(following, 2)
