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

# Readings (see gateway.store.readings). ``readings`` holds raw device values;
# ``dropped`` marks a row whose value may be below its predecessor's (reset,
# wrap, glitch, out-of-order arrival, or first after a restart), and the
# partial index finds those few rows without a scan. ``readings_minute`` is
# the compacted series: per whole minute the unrolled counter (channel unit)
# or cumulative kWh (power); NULL value = a break marker (NaN), at any time.
# ``compaction`` is per channel how far compaction got, where the next run
# continues (hand-over sample, its unroll offset or energy, and its value in
# the compacted series) and the time of the oldest raw row still valid.
_V2 = """
CREATE TABLE channels (
    id      INTEGER PRIMARY KEY,
    adapter TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind    TEXT NOT NULL,
    unit    TEXT NOT NULL,
    wrap    REAL,
    UNIQUE (adapter, channel)
);
CREATE TABLE readings (
    channel_id INTEGER NOT NULL REFERENCES channels (id),
    at         REAL NOT NULL,
    value      REAL NOT NULL,
    dropped    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel_id, at)
) WITHOUT ROWID;
CREATE INDEX readings_dropped ON readings (channel_id, at) WHERE dropped;
CREATE TABLE readings_minute (
    channel_id INTEGER NOT NULL REFERENCES channels (id),
    at         REAL NOT NULL,
    value      REAL,
    PRIMARY KEY (channel_id, at)
) WITHOUT ROWID;
CREATE INDEX readings_minute_breaks ON readings_minute (channel_id, at) WHERE value IS NULL;
CREATE TABLE compaction (
    channel_id     INTEGER PRIMARY KEY REFERENCES channels (id),
    through        REAL NOT NULL,
    handover_at    REAL,
    handover_state REAL NOT NULL,
    handover_value REAL,
    raw_from       REAL NOT NULL
)
"""

_V3 = """
CREATE TABLE report_jobs (
    event_id TEXT NOT NULL,
    kind     TEXT NOT NULL,
    outcome  TEXT NOT NULL CHECK (outcome IN ('queued', 'empty', 'invalid')),
    note     TEXT,
    at       REAL NOT NULL,
    PRIMARY KEY (event_id, kind)
)
"""

# Taking part (gateway.control). ``lpc_decisions``: per LPC event and target, what the
# gateway decided before it committed (``acknowledged``, ``declined``, ``left_out``: a
# location of another gateway), why, and for an acknowledged target its caps as JSON
# ``[[start, end, max_kw], ...]`` (epoch seconds): what the controller holds, also after
# a restart. ``commands``: every command sent to a device, with its confirmation.
# ``schedules``: per event and resource, the participation and the schedule a strategy
# chose (JSON ``[[start, end], ...]``: on) over the event's window; ``overrides``: the
# operator's choice.
_V4 = """
CREATE TABLE lpc_decisions (
    event_id       TEXT NOT NULL,
    target         TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('location', 'resource')),
    location_id    TEXT NOT NULL,
    meter_point_id TEXT,
    resource_id    TEXT,
    decision       TEXT NOT NULL CHECK (decision IN ('acknowledged', 'declined', 'left_out')),
    reason         TEXT NOT NULL,
    caps           TEXT NOT NULL,
    decided_at     REAL NOT NULL,
    PRIMARY KEY (event_id, target)
);
CREATE TABLE commands (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT,
    resource_id     TEXT,
    adapter         TEXT NOT NULL,
    control         TEXT NOT NULL,
    value           REAL NOT NULL,
    reason          TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('sending', 'confirmed', 'failed', 'dry_run')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    requested_at    REAL NOT NULL,
    sent_at         REAL,
    confirmed_at    REAL,
    confirmed_value REAL,
    error           TEXT
);
CREATE INDEX commands_by_event ON commands (event_id, id);
CREATE TABLE schedules (
    event_id      TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    participation TEXT NOT NULL CHECK (participation IN ('shift', 'report', 'off')),
    strategy      TEXT NOT NULL,
    schedule      TEXT NOT NULL,
    window_start  REAL NOT NULL,
    window_end    REAL NOT NULL,
    note          TEXT,
    at            REAL NOT NULL,
    PRIMARY KEY (event_id, resource_id)
);
CREATE INDEX schedules_by_end ON schedules (window_end);
CREATE TABLE overrides (
    event_id      TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    participation TEXT NOT NULL CHECK (participation IN ('shift', 'report', 'off')),
    at            REAL NOT NULL,
    PRIMARY KEY (event_id, resource_id)
)
"""

# Retention (gateway.store.retention): a delivered report's frozen body and its event's
# payload are dropped once their month is closed (the rules: gateway.store.retention_policy);
# the row stays for de-duplication and audit. ``kwh_totals``: per target, the kWh the dropped
# body reported (JSON, computed from it first); ``body_dropped_at`` / ``payload_dropped_at``:
# when. The partial indexes hold only the rows that still carry a body or payload, with the
# columns retention's rules test, so a pass reads neither the years of slim rows nor the
# bodies it keeps.
_V5 = """
ALTER TABLE outbox ADD COLUMN kwh_totals TEXT;
ALTER TABLE outbox ADD COLUMN body_dropped_at REAL;
ALTER TABLE events ADD COLUMN payload_dropped_at REAL;
CREATE INDEX outbox_with_body ON outbox (state, deadline, updated_at, delivered_at)
    WHERE body_dropped_at IS NULL;
CREATE INDEX events_with_payload ON events (plan_state, received_at)
    WHERE payload_dropped_at IS NULL;
CREATE INDEX commands_by_time ON commands (requested_at);
CREATE INDEX report_jobs_by_time ON report_jobs (at);
CREATE INDEX lpc_decisions_by_time ON lpc_decisions (decided_at)
"""

# Listings (``ecgw outbox list``, ``ecgw events list``: newest first, by state, since a
# time) read only the rows they show, from an index, however big the table. The events
# index by plan state and arrival serves the scheduler's ``WHERE plan_state = ? ORDER BY
# received_at`` as well, so it replaces ``events_by_plan``. ``row_counts`` holds how many
# events there are and how many reports in each state, kept by triggers in the writing
# transaction, so ``ecgw status`` and ``/metrics`` read four rows instead of counting a
# year of them. (No line inside a trigger ends with ";": migrations are split there.)
_V6 = """
CREATE INDEX outbox_by_created ON outbox (created_at);
CREATE INDEX outbox_by_state_created ON outbox (state, created_at);
CREATE INDEX events_by_plan_received ON events (plan_state, received_at);
DROP INDEX events_by_plan;
CREATE TABLE row_counts (
    name TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO row_counts (name, n) SELECT 'events', COUNT(*) FROM events;
INSERT INTO row_counts (name, n)
    SELECT 'outbox.' || s.state, (SELECT COUNT(*) FROM outbox o WHERE o.state = s.state)
    FROM (SELECT 'pending' AS state UNION ALL SELECT 'in_flight' UNION ALL SELECT 'delivered'
          UNION ALL SELECT 'dead') s;
CREATE TRIGGER events_count_insert AFTER INSERT ON events BEGIN
    UPDATE row_counts SET n = n + 1 WHERE name = 'events'; END;
CREATE TRIGGER events_count_delete AFTER DELETE ON events BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'events'; END;
CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox BEGIN
    UPDATE row_counts SET n = n + 1 WHERE name = 'outbox.' || NEW.state; END;
CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'outbox.' || OLD.state; END;
CREATE TRIGGER outbox_count_move AFTER UPDATE OF state ON outbox
    WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'outbox.' || OLD.state; UPDATE row_counts
    SET n = n + 1 WHERE name = 'outbox.' || NEW.state; END
"""

# The fleet (docs/fleet.md). ``events.received_via`` gains ``hub`` (a site's events come
# from its hub over the broker): SQLite cannot change a CHECK in place, so the table is
# copied once, with the indexes and row-count triggers of v5 and v6 made again (dropping
# the old table drops them and fires no trigger, so the count stays right). The hub's
# tables: the sites and what each owns (ids as JSON arrays), when each was last heard from,
# every event's route to a site once the broker took it, and the answer owed to a site for
# each of its reports in the hub's outbox.
_V7 = """
CREATE TABLE events_v7 (
    event_id           TEXT PRIMARY KEY,
    payload_type       TEXT NOT NULL,
    created_at         TEXT,
    received_via       TEXT NOT NULL CHECK (received_via IN ('webhook', 'poll', 'hub')),
    received_at        REAL NOT NULL,
    notification_id    TEXT,
    notification_type  TEXT,
    poll_sweep         INTEGER,
    payload            BLOB NOT NULL,
    plan_state         TEXT NOT NULL DEFAULT 'new',
    plan_note          TEXT,
    payload_dropped_at REAL
);
INSERT INTO events_v7 (event_id, payload_type, created_at, received_via, received_at,
    notification_id, notification_type, poll_sweep, payload, plan_state, plan_note,
    payload_dropped_at)
SELECT event_id, payload_type, created_at, received_via, received_at,
    notification_id, notification_type, poll_sweep, payload, plan_state, plan_note,
    payload_dropped_at
FROM events;
DROP TABLE events;
ALTER TABLE events_v7 RENAME TO events;
CREATE INDEX events_by_received ON events (received_at);
CREATE INDEX events_by_plan_received ON events (plan_state, received_at);
CREATE INDEX events_with_payload ON events (plan_state, received_at)
    WHERE payload_dropped_at IS NULL;
CREATE TRIGGER events_count_insert AFTER INSERT ON events BEGIN
    UPDATE row_counts SET n = n + 1 WHERE name = 'events'; END;
CREATE TRIGGER events_count_delete AFTER DELETE ON events BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'events'; END;
CREATE TABLE fleet_sites (
    site_id      TEXT PRIMARY KEY,
    resources    TEXT NOT NULL DEFAULT '[]',
    locations    TEXT NOT NULL DEFAULT '[]',
    meter_points TEXT NOT NULL DEFAULT '[]',
    source       TEXT NOT NULL CHECK (source IN ('config', 'import')),
    updated_at   REAL NOT NULL
);
CREATE TABLE fleet_seen (
    site_id   TEXT PRIMARY KEY,
    online    INTEGER,
    last_seen REAL NOT NULL
);
CREATE TABLE fleet_routes (
    event_id     TEXT NOT NULL,
    site_id      TEXT NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (event_id, site_id)
);
CREATE INDEX fleet_routes_by_site ON fleet_routes (site_id, published_at);
CREATE TABLE fleet_answers (
    outbox_id   INTEGER PRIMARY KEY,
    site_id     TEXT NOT NULL,
    answered_at REAL
);
CREATE INDEX fleet_answers_owed ON fleet_answers (answered_at, outbox_id)
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
