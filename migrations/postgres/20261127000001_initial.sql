-- Switchyard's own tables (PostgreSQL). Never edit once applied: add a new file.
-- The same tables as migrations/sqlite, in PostgreSQL's types.

-- Documents of every module, addressed by (module, collection, key).
-- `key` sorts bytewise (COLLATE "C"): a prefix scan reads a contiguous range
-- and stops at the first non-match, which a linguistic collation would break.
CREATE TABLE documents (
    module      TEXT        NOT NULL,
    collection  TEXT        NOT NULL,
    key         TEXT        COLLATE "C" NOT NULL,
    value       JSONB       NOT NULL,
    version     BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (module, collection, key)
);

-- Message ids a module has applied, with the first answer for duplicates.
CREATE TABLE inbox (
    module      TEXT        NOT NULL,
    message_id  TEXT        NOT NULL,
    answer      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (module, message_id)
);

-- Committed events (and commands appended without waiting). With no broker
-- configured this table is the log that in-process consumers read by seq;
-- the store serialises inserts so seq order is commit order (see postgres.rs).
-- `body` stays text: it is relayed byte for byte as the module emitted it.
CREATE TABLE outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT        NOT NULL UNIQUE,
    topic        TEXT        NOT NULL,
    subtopic     TEXT        NOT NULL,
    headers      JSONB       NOT NULL,
    body         TEXT        NOT NULL,
    source       TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_topic_seq ON outbox (topic, seq);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- How far each in-process consumer has read the outbox log.
CREATE TABLE log_cursors (
    consumer  TEXT   PRIMARY KEY,
    position  BIGINT NOT NULL
);

-- Messages whose handling failed for good.
CREATE TABLE dead_letters (
    id             TEXT        PRIMARY KEY,
    module         TEXT        NOT NULL,
    message_id     TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    subtopic       TEXT        NOT NULL,
    envelope       JSONB       NOT NULL,
    error_kind     TEXT        NOT NULL,
    error_message  TEXT        NOT NULL,
    attempts       INTEGER     NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    replayed_at    TIMESTAMPTZ,
    UNIQUE (module, message_id)
);
CREATE INDEX dead_letters_topic ON dead_letters (topic, created_at);
