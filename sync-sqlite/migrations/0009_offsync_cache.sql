-- The cache budget (see sync_core::engine, "cache budget"): each membership keeps the
-- size of the record it holds as last stored (its data and acknowledged base, in bytes),
-- when the app last read that record (µs since the epoch; arrival counts as a read), and
-- whether the record was evicted. An evicted membership stays: the subscription still
-- covers the record, and the next time the subscription is held it is downloaded again.
ALTER TABLE offsync_members ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE offsync_members ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE offsync_members ADD COLUMN evicted INTEGER NOT NULL DEFAULT 0;
