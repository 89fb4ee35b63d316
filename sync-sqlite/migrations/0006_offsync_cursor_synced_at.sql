-- When each collection last took a page from the server (microseconds since the epoch),
-- stored with its cursor: how fresh the device's copy is, for tools and status screens.
ALTER TABLE offsync_cursors ADD COLUMN synced_at INTEGER;
