-- Switchyard's own tables (SQLite). Never edit once applied: add a new file.

-- Documents of every module, addressed by (module, collection, key).
CREATE TABLE documents (
    module      TEXT    NOT NULL,
    collection  TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (module, collection, key)
) WITHOUT ROWID;

-- Message ids a module has applied, with the first answer for duplicates.
CREATE TABLE inbox (
    module      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    answer      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (module, message_id)
) WITHOUT ROWID;

-- Committed events (and commands appended without waiting). With no broker
-- configured this table is the log that in-process consumers read by seq.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    subtopic     TEXT NOT NULL,
    headers      TEXT NOT NULL,
    body         TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    published_at TEXT
);
CREATE INDEX outbox_topic_seq ON outbox (topic, seq);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- How far each in-process consumer has read the outbox log.
CREATE TABLE log_cursors (
    consumer  TEXT    PRIMARY KEY,
    position  INTEGER NOT NULL
) WITHOUT ROWID;

-- Messages whose handling failed for good.
CREATE TABLE dead_letters (
    id             TEXT    PRIMARY KEY,
    module         TEXT    NOT NULL,
    message_id     TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    subtopic       TEXT    NOT NULL,
    envelope       TEXT    NOT NULL,
    error_kind     TEXT    NOT NULL,
    error_message  TEXT    NOT NULL,
    attempts       INTEGER NOT NULL,
    created_at     TEXT    NOT NULL,
    replayed_at    TEXT,
    UNIQUE (module, message_id)
);
CREATE INDEX dead_letters_topic ON dead_letters (topic, created_at);
