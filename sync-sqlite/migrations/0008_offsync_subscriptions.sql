-- Subscriptions (see sync_core::subscription): what the app asked the server for, per
-- collection synced on demand, with the subscription's own cursor. `active` is 1 while
-- the app holds a handle; a released one stays (and keeps its records) until
-- released_at + ttl_ms, unless keep_synced. Times in µs since the epoch.
CREATE TABLE offsync_subscriptions (
    id          TEXT    PRIMARY KEY,
    collection  TEXT    NOT NULL,
    query       TEXT    NOT NULL,
    cursor      TEXT,
    ttl_ms      INTEGER NOT NULL,
    keep_synced INTEGER NOT NULL DEFAULT 0,
    active      INTEGER NOT NULL DEFAULT 1,
    released_at INTEGER,
    synced_at   INTEGER,
    total       INTEGER
);

-- Which subscriptions hold which records: a record is stored once however many hold
-- it, and dropped (when clean) only when the last one lets go. `stale` marks the
-- members of a subscription being downloaded again after a reset; those not sent again
-- go when the download ends.
CREATE TABLE offsync_members (
    collection   TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    subscription TEXT    NOT NULL,
    stale        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (collection, id, subscription)
) WITHOUT ROWID;
CREATE INDEX offsync_members_of ON offsync_members (subscription, stale);
