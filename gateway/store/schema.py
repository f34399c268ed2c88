"""Versioned schema migrations. Append only: never edit a released migration.

``PRAGMA user_version`` holds how many of these have run. Times the gateway
makes are REAL seconds since the epoch (UTC); times taken from the API are
kept as the ISO text it sent.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

_V1 = """
CREATE TABLE events (
    event_id          TEXT PRIMARY KEY,
    payload_type      TEXT NOT NULL,
    created_at        TEXT,
    received_via      TEXT NOT NULL CHECK (received_via IN ('webhook', 'poll')),
    received_at       REAL NOT NULL,
    notification_id   TEXT,
    notification_type TEXT,
    poll_sweep        INTEGER,
    payload           BLOB NOT NULL,
    plan_state        TEXT NOT NULL DEFAULT 'new',
    plan_note         TEXT
);
CREATE INDEX events_by_received ON events (received_at);
CREATE INDEX events_by_plan ON events (plan_state);
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL,
    kind             TEXT NOT NULL,
    body             BLOB NOT NULL,
    idempotency_key  TEXT NOT NULL,
    source           TEXT NOT NULL,
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    report_id        TEXT,
    deadline         REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    delivered_at     REAL,
    UNIQUE (event_id, kind)
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at, id);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""

MIGRATIONS: tuple[str, ...] = (_V1,)
