"""Attack: event ids and payload types reach the operator's terminal with escapes intact.

``ecgw events list`` prints the table with each stored event id and ``payloadType`` as
received. An id or an unknown ``payloadType`` carrying ESC/BEL sequences (from a ``GET
/events`` reply of a hostile or compromised API, no webhook secret needed; or a signed
webhook) is written raw: found, ``ESC ] 0 ; pwned BEL`` retitles the terminal and
``ESC [ 2 J`` clears it. (``events show`` prints JSON and escapes them.)

Expected: control characters are shown escaped or replaced in the table, as in JSON.
"""

from __future__ import annotations

from pathlib import Path

from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent
from tests.kit.proc import ecgw, offline_config


async def test_events_list_does_not_print_control_characters(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    (tmp_path / "state").mkdir()
    async with open_database(tmp_path / "state" / "ecgw.sqlite3") as db:
        inbox = Inbox(db)
        for event_id, payload_type in (
            ("a\x1b]0;pwned\x07\x1b[2Jb", "UserEligibility"),
            ("c1", "\x1b[31mRED\x1b[0m"),
        ):
            event = NewEvent(
                event_id=event_id,
                payload_type=payload_type,
                created_at="2026-12-01T12:00:00Z",
                payload=b'{"payloadType":"x"}',
            )
            await inbox.add(event, via="poll", at=1796129787.0)
    listed = ecgw("events", "list", config=config)
    assert listed.returncode == 0, listed.stderr
    assert "c1" in listed.stdout
    controls = sorted({hex(ord(c)) for c in listed.stdout if ord(c) < 32 and c not in "\n"})
    assert not controls, f"control characters printed raw: {controls}"
