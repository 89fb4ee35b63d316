-- A staged change keeps the mutation that made its version, as a page's does: a device
-- replacing a collection must still know its own unanswered write when the server sends
-- it back (without it, that write was taken for another device's and stored as a conflict).
ALTER TABLE offsync_stage ADD COLUMN mutation_id TEXT;
