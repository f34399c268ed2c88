"""``ecgw report submit``: the OpenAPI document's own example, and the canonical form sent."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ReportInvalid
from gateway.reports.manual import parse_manual_report
from tests.kit.proc import ecgw

NOW = 1_700_000_000.0


def openapi_report_example() -> dict[str, Any]:
    """The request example of ``POST /reports`` in the packaged OpenAPI document, as it is."""
    spec = json.loads(
        resources.files("gateway.contract").joinpath("ec-sandbox-openapi.json").read_text()
    )
    example: dict[str, Any] = spec["paths"]["/reports"]["post"]["requestBody"]["content"][
        "application/json"
    ]["example"]
    return example


def test_the_openapi_example_has_curve_points_null() -> None:
    (payload,) = openapi_report_example()["payloads"]
    assert "curvePoints" in payload and payload["curvePoints"] is None  # what the test is about


def test_report_submit_accepts_the_openapi_example(tmp_path: Path) -> None:
    config = tmp_path / "ecgw.toml"
    config.write_text('[gateway]\nstate_dir = "state"\n')
    example = openapi_report_example()
    report = tmp_path / "example.json"
    report.write_text(json.dumps(example, indent=2))
    result = ecgw("report", "submit", str(report), config=config)
    assert result.returncode == 0, result.stderr
    assert f"queued EnergyUsage report for event {example['eventId']}" in result.stdout
    (shown,) = json.loads(ecgw("outbox", "show", example["eventId"], config=config).stdout)
    (sent,) = shown["body"]["payloads"]
    assert "curvePoints" not in sent and "locationId" not in sent  # nulls are left out
    assert sent["points"] == example["payloads"][0]["points"]  # UTC already: kept as written
    assert shown["deadline"] == "2026-04-01T00:00:00Z"


def report(**payload: Any) -> bytes:
    base = {
        "payloadType": "EnergyUsage",
        "resourceId": "r1",
        "locationId": "l1",
        "resolution": "01:00:00",
        "points": [{"timestamp": "2026-03-03T12:00:00.1234567Z", "kiloWattHours": 1.5}],
    }
    return json.dumps({"eventId": "e1", "payloads": [{**base, **payload}]}).encode()


def sent(raw: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(parse_manual_report(raw, now=NOW).body)["payloads"][0]
    return payload


def test_points_in_curve_points_are_refused_naming_the_field() -> None:
    points = [{"timestamp": "2026-03-03T12:00:00Z", "kiloWattHours": 1.0}]
    with pytest.raises(ReportInvalid) as err:
        parse_manual_report(report(curvePoints=points), now=NOW)
    assert err.value.field == "payloads[0].curvePoints"
    assert "curvePoints" not in sent(report(curvePoints=[]))


def test_timestamps_keep_every_digit_and_are_written_in_utc() -> None:
    assert sent(report())["points"][0]["timestamp"] == "2026-03-03T12:00:00.1234567Z"
    shifted = report(
        points=[{"timestamp": "2026-03-03T13:00:00.1234567+01:00", "kiloWattHours": 1}]
    )
    assert sent(shifted)["points"][0]["timestamp"] == "2026-03-03T12:00:00.1234567Z"


def test_resolution_is_written_hh_mm_ss() -> None:
    assert sent(report(resolution="01:00:00.0000000"))["resolution"] == "01:00:00"
    with pytest.raises(ReportInvalid) as err:
        parse_manual_report(report(resolution="99999999.00:00:00"), now=NOW)
    assert err.value.field == "payloads[0].resolution"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"eventId":"e","payloads":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        report(points=[{"timestamp": "9999-12-31T23:00:00Z", "kiloWattHours": 1}]),
    ],
    ids=["deep", "year-9999"],
)
def test_what_cannot_be_represented_is_refused_not_a_traceback(raw: bytes) -> None:
    with pytest.raises(ReportInvalid):
        parse_manual_report(raw, now=NOW)


def test_a_report_file_longer_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    from gateway.reports.manual import MAX_FILE_BYTES, read_report_file

    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="longer than"):
        read_report_file(str(big))
    fine = tmp_path / "fine.json"
    fine.write_bytes(b" " * MAX_FILE_BYTES)
    assert len(read_report_file(str(fine))) == MAX_FILE_BYTES
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for odd in (fifo, tmp_path, Path("/dev/zero")):
        with pytest.raises(ValueError, match="not a regular file"):
            read_report_file(str(odd))
