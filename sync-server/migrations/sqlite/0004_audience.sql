-- Audience keys (see sync_server::rules::key) of the records of collections whose read
-- rule names fields, groups or attributes: who may read each record, as an index pulls
-- read by key. A key a record no longer holds stays as an absent row at the position of
-- the change that took it away, so that a pull from before that change sends the
-- record's former readers a removal. Present rows always carry the record's position.
CREATE TABLE sync_access (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    present    INTEGER NOT NULL,
    PRIMARY KEY (collection, id, key)
) WITHOUT ROWID;
CREATE INDEX sync_access_feed ON sync_access (collection, key, seq);
