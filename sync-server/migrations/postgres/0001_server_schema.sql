-- offsync reference server schema (PostgreSQL).

CREATE TABLE sync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The feed head. Every push locks this row first and holds the lock until it commits,
-- so feed positions are handed out in commit order across all server nodes: a pull can
-- never read past a position whose transaction has not committed yet.
CREATE TABLE sync_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT  NOT NULL
);
INSERT INTO sync_head (id, seq) VALUES (1, 0);

CREATE TABLE sync_records (
    collection TEXT        NOT NULL,
    id         TEXT        NOT NULL,
    owner      TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    deleted    BOOLEAN     NOT NULL,
    data       TEXT,
    seq        BIGINT      NOT NULL,
    updated_at BIGINT      NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE UNIQUE INDEX sync_records_feed ON sync_records (collection, seq);
CREATE INDEX sync_records_owner_feed ON sync_records (collection, owner, seq);
CREATE INDEX sync_records_tombstones ON sync_records (deleted, updated_at);

CREATE TABLE sync_ledger (
    user_name   TEXT NOT NULL,
    mutation_id TEXT NOT NULL,
    result      TEXT NOT NULL,
    PRIMARY KEY (user_name, mutation_id)
);

CREATE TABLE sync_purged (
    collection  TEXT PRIMARY KEY,
    through_seq BIGINT NOT NULL
);
