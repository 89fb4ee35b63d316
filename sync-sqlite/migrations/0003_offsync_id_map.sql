-- Records the server gave ids of its own (server-assigned ids): the id a record was
-- created with here, and the one it has had since. The app may still hold the old id.
CREATE TABLE offsync_id_map (
    collection TEXT NOT NULL,
    local_id   TEXT NOT NULL,
    server_id  TEXT NOT NULL,
    PRIMARY KEY (collection, local_id)
) WITHOUT ROWID;
