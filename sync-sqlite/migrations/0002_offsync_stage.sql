-- The staging area of collections being replaced (read-only pattern, resync after a
-- reset): pulled pages land here and are swapped into offsync_records in one
-- transaction at the end, so a crash midway leaves the old records whole.
CREATE TABLE offsync_stage (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    data       TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
