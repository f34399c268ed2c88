"""A Modbus TCP server with a register map, for adapter tests: the sandbox's own
(:mod:`gateway.sandbox.registers`, which ``ecgw sandbox meter`` serves too, without pytest)."""

from gateway.sandbox.registers import RegisterServer, u32_words

__all__ = ["RegisterServer", "u32_words"]
