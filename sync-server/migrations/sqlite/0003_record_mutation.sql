-- The mutation that wrote each record's current version (NULL for rows written before
-- this migration). Pulls send it, so that a device whose push went unanswered knows its
-- own write when a pull brings it back.
ALTER TABLE sync_records ADD COLUMN mutation_id TEXT;
