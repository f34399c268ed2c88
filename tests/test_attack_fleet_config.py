"""Attacks on the fleet's config tables: user mistakes that must be one line, not a surprise."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError


def test_a_broker_url_with_port_zero_is_refused_not_taken_as_the_default(tmp_path: Path) -> None:
    """``mqtts://broker:0`` loaded, and the site connected to 8883 (``port or default``)."""
    (tmp_path / "pw").write_text("broker-pass\n")
    table = {
        "mode": "hub",
        "url": "mqtts://broker.example:0",
        "site_id": "site-a",
        "password_file": "pw",
    }
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"gateway": {"state_dir": str(tmp_path / "s")}, "upstream": table}, base=tmp_path
        )
    assert info.value.key == "upstream.url"
    assert "port 0" in str(info.value)
