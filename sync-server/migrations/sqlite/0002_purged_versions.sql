-- The highest version among a collection's purged tombstones: a record created again
-- after its tombstone was purged starts above it, so no client that remembers the old
-- record ever sees a version number go backwards (or repeat) for the same id.
ALTER TABLE sync_purged ADD COLUMN max_version INTEGER NOT NULL DEFAULT 0;
