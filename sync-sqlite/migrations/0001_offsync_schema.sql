-- offsync local store schema. Every table carries the reserved offsync_ prefix.

CREATE TABLE offsync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per local record. data is the app's JSON (NULL once deleted locally);
-- base is the last server-acknowledged data, for three-way merges and reverts.
CREATE TABLE offsync_records (
    collection     TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    data           TEXT,
    deleted        INTEGER NOT NULL DEFAULT 0,
    server_version INTEGER,
    base           TEXT,
    modified_at    INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

-- The persisted outbox, in seq order. status 0 = queued, 1 = parked (rejected).
-- attempts > 0 means a push carried it: the server may have applied it, so nothing
-- folds into it and it is never dropped silently.
CREATE TABLE offsync_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    mutation_id  TEXT    NOT NULL UNIQUE,
    collection   TEXT    NOT NULL,
    record_id    TEXT,
    op           TEXT    NOT NULL CHECK (op IN ('upsert', 'delete', 'action')),
    action       TEXT,
    data         TEXT,
    versioned    INTEGER NOT NULL,
    base_version INTEGER,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    status       INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX offsync_outbox_record ON offsync_outbox (collection, record_id, seq);

CREATE TABLE offsync_cursors (
    collection TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL
) WITHOUT ROWID;

-- Open conflicts. The local side and the base are read from offsync_records, so edits
-- made while the conflict is open are part of it.
CREATE TABLE offsync_conflicts (
    collection     TEXT    NOT NULL,
    record_id      TEXT    NOT NULL,
    mutation_id    TEXT,
    server_exists  INTEGER NOT NULL,
    server_version INTEGER,
    server_deleted INTEGER NOT NULL DEFAULT 0,
    server_data    TEXT,
    detected_at    INTEGER NOT NULL,
    PRIMARY KEY (collection, record_id)
) WITHOUT ROWID;

-- Local writes go through this view: one INSERT is one statement, so the record change
-- and its outbox entry commit atomically without BEGIN/COMMIT round trips.
CREATE VIEW offsync_write (kind, collection, record_id, data, mutation_id, action, versioned, at) AS
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;

CREATE TRIGGER offsync_write_unknown INSTEAD OF INSERT ON offsync_write
WHEN NEW.kind NOT IN ('insert', 'update', 'delete', 'action')
BEGIN
    SELECT RAISE(ABORT, 'offsync:bad_kind');
END;

-- insert / update: the record, plus an outbox upsert unless it folds into the record's
-- unsent create (the last entry is an upsert no push carried, and the server never saw
-- the record).
CREATE TRIGGER offsync_write_put INSTEAD OF INSERT ON offsync_write
WHEN NEW.kind IN ('insert', 'update')
BEGIN
    SELECT RAISE(ABORT, 'offsync:already_exists')
     WHERE NEW.kind = 'insert' AND EXISTS (
        SELECT 1 FROM offsync_records
         WHERE collection = NEW.collection AND id = NEW.record_id AND deleted = 0);
    SELECT RAISE(ABORT, 'offsync:not_found')
     WHERE NEW.kind = 'update' AND NOT EXISTS (
        SELECT 1 FROM offsync_records
         WHERE collection = NEW.collection AND id = NEW.record_id AND deleted = 0);
    UPDATE offsync_outbox SET data = NEW.data
     WHERE seq = (SELECT max(seq) FROM offsync_outbox
                   WHERE collection = NEW.collection AND record_id = NEW.record_id)
       AND op = 'upsert' AND attempts = 0 AND status = 0
       AND EXISTS (SELECT 1 FROM offsync_records
                    WHERE collection = NEW.collection AND id = NEW.record_id
                      AND server_version IS NULL);
    INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, data, versioned, created_at)
    SELECT NEW.mutation_id, NEW.collection, NEW.record_id, 'upsert', NEW.data, NEW.versioned, NEW.at
     WHERE NOT EXISTS (
        SELECT 1 FROM offsync_outbox o
         WHERE o.seq = (SELECT max(seq) FROM offsync_outbox
                         WHERE collection = NEW.collection AND record_id = NEW.record_id)
           AND o.op = 'upsert' AND o.attempts = 0 AND o.status = 0
           AND EXISTS (SELECT 1 FROM offsync_records
                        WHERE collection = NEW.collection AND id = NEW.record_id
                          AND server_version IS NULL));
    INSERT INTO offsync_records (collection, id, data, deleted, modified_at)
    VALUES (NEW.collection, NEW.record_id, NEW.data, 0, NEW.at)
    ON CONFLICT (collection, id) DO UPDATE
       SET data = excluded.data, deleted = 0, modified_at = excluded.modified_at;
END;

-- delete: when the server never saw the record, no push carried any of its mutations and
-- no conflict holds it ("unseen"), its queued mutations and the row go and nothing is
-- sent; otherwise the row becomes a local tombstone and a delete is queued.
CREATE TRIGGER offsync_write_delete INSTEAD OF INSERT ON offsync_write
WHEN NEW.kind = 'delete'
BEGIN
    SELECT RAISE(ABORT, 'offsync:not_found')
     WHERE NOT EXISTS (
        SELECT 1 FROM offsync_records
         WHERE collection = NEW.collection AND id = NEW.record_id AND deleted = 0);
    DELETE FROM offsync_outbox
     WHERE collection = NEW.collection AND record_id = NEW.record_id
       AND EXISTS (SELECT 1 FROM offsync_records
                    WHERE collection = NEW.collection AND id = NEW.record_id AND server_version IS NULL)
       AND NOT EXISTS (SELECT 1 FROM offsync_outbox
                        WHERE collection = NEW.collection AND record_id = NEW.record_id AND attempts > 0)
       AND NOT EXISTS (SELECT 1 FROM offsync_conflicts
                        WHERE collection = NEW.collection AND record_id = NEW.record_id);
    INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, data, versioned, created_at)
    SELECT NEW.mutation_id, NEW.collection, NEW.record_id, 'delete', NULL, NEW.versioned, NEW.at
     WHERE NOT (
           EXISTS (SELECT 1 FROM offsync_records
                    WHERE collection = NEW.collection AND id = NEW.record_id AND server_version IS NULL)
       AND NOT EXISTS (SELECT 1 FROM offsync_outbox
                        WHERE collection = NEW.collection AND record_id = NEW.record_id AND attempts > 0)
       AND NOT EXISTS (SELECT 1 FROM offsync_conflicts
                        WHERE collection = NEW.collection AND record_id = NEW.record_id));
    UPDATE offsync_records SET data = NULL, deleted = 1, modified_at = NEW.at
     WHERE collection = NEW.collection AND id = NEW.record_id
       AND EXISTS (SELECT 1 FROM offsync_outbox
                    WHERE collection = NEW.collection AND record_id = NEW.record_id);
    DELETE FROM offsync_records
     WHERE collection = NEW.collection AND id = NEW.record_id
       AND NOT EXISTS (SELECT 1 FROM offsync_outbox
                        WHERE collection = NEW.collection AND record_id = NEW.record_id)
       AND NOT EXISTS (SELECT 1 FROM offsync_conflicts
                        WHERE collection = NEW.collection AND record_id = NEW.record_id);
END;

-- action: only an outbox entry; the record is not changed locally.
CREATE TRIGGER offsync_write_action INSTEAD OF INSERT ON offsync_write
WHEN NEW.kind = 'action'
BEGIN
    INSERT INTO offsync_outbox (mutation_id, collection, record_id, op, action, data, versioned, created_at)
    VALUES (NEW.mutation_id, NEW.collection, NEW.record_id, 'action', NEW.action, NEW.data, NEW.versioned, NEW.at);
END;
