"""A template ECGW adapter (copy it): a Modbus TCP meter with one 32-bit Wh counter."""

from ecgw_adapter_template.meter import TemplateMeter, TemplateMeterConfig

__all__ = ["TemplateMeter", "TemplateMeterConfig"]
