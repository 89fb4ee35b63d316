-- Which engine syncs the store when several processes open it (an app and its sync
-- service): one row per lease, its holder and when it lapses (microseconds since 1970).
CREATE TABLE offsync_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
