-- offsync reference server schema (SQLite).

CREATE TABLE sync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Every record ever written (tombstones until purged). seq is the record's position in
-- the change feed: a global counter, assigned inside the single write transaction, so
-- on SQLite seq order is commit order.
CREATE TABLE sync_records (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    data       TEXT,
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX sync_records_feed ON sync_records (collection, seq);
CREATE INDEX sync_records_owner_feed ON sync_records (collection, owner, seq);
CREATE INDEX sync_records_tombstones ON sync_records (deleted, updated_at);

-- The idempotency ledger: the first answer to each (user, mutation_id), replayed for repeats.
CREATE TABLE sync_ledger (
    user_name   TEXT NOT NULL,
    mutation_id TEXT NOT NULL,
    result      TEXT NOT NULL,
    PRIMARY KEY (user_name, mutation_id)
) WITHOUT ROWID;

-- Per collection, the highest seq of a purged tombstone: older cursors get `reset`.
CREATE TABLE sync_purged (
    collection  TEXT PRIMARY KEY,
    through_seq INTEGER NOT NULL
) WITHOUT ROWID;
