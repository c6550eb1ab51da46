"""The schema, as one list of migrations both engines run, each spelled by the engine's dialect.

Each entry upgrades the schema by one version; never edit one that has shipped, add one. Tokens in braces are
the dialect's (``Dialect.types``): column types, and the clauses only one engine has (``{without_rowid}``). A
script is split into statements at semicolons: none in comments.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.domain.rules import FINAL_STATUSES
from service.store.sql import Dialect

#: The column types each engine spells its own way.
SQLITE_TYPES = {
    "int2": "INTEGER",
    "int4": "INTEGER",
    "int8": "INTEGER",
    "bool": "INTEGER",
    "text": "TEXT",
    "bytes": "BLOB",
    "log_key": "INTEGER PRIMARY KEY AUTOINCREMENT",  # never reused, even after pruning
    "serial_key": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "without_rowid": "WITHOUT ROWID",
    "no_statistics": "",  # SQLite's statistics count index entries; they hold no value of these columns.
}
POSTGRES_TYPES = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "bool": "boolean",
    "text": "text",
    "bytes": "bytea",
    "log_key": "bigint PRIMARY KEY",
    "serial_key": "bigserial PRIMARY KEY",
    "without_rowid": "",
    "no_statistics": (
        "ALTER TABLE events ALTER COLUMN callback SET STATISTICS 0;"
        " ALTER TABLE inbound ALTER COLUMN message SET STATISTICS 0;"
        " ALTER TABLE quarantine ALTER COLUMN body SET STATISTICS 0"
    ),
}

MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS events (
        sequence {log_key},
        tracking_id {text} NOT NULL,
        campaign_tracking_id {text} NOT NULL,        -- '' when the callback has none
        status_key {text} NOT NULL,                  -- the status name, case-folded
        status {int2} NOT NULL,                      -- MessageStatus
        status_name {text} NOT NULL,                 -- as Routee sent it
        rank {int2} NOT NULL,                        -- lifecycle rank, breaks ties of update_us
        update_us {int8} NOT NULL,                   -- status.updatedDate, microseconds since the epoch
        receive_us {int8} NOT NULL,
        was_current {bool} NOT NULL,                 -- when it became the current status as stored
        callback {bytes} NOT NULL,                   -- ViberCallback, serialized protobuf
        UNIQUE (tracking_id, status_key, update_us)
    );
    CREATE INDEX IF NOT EXISTS events_by_campaign ON events (campaign_tracking_id, sequence);
    CREATE TABLE IF NOT EXISTS messages (
        tracking_id {text} PRIMARY KEY,
        campaign_tracking_id {text} NOT NULL,
        current_sequence {int8} NOT NULL,
        update_us {int8} NOT NULL,
        rank {int2} NOT NULL
    ) {without_rowid};
    CREATE INDEX IF NOT EXISTS messages_by_campaign ON messages (campaign_tracking_id);
    CREATE TABLE IF NOT EXISTS meta (key {text} PRIMARY KEY, value {int8} NOT NULL) {without_rowid};
    """,
    # The log's head is a row of its own, the one counter every writer takes its sequences from.
    """
    INSERT INTO meta (key, value) SELECT 'last_sequence', coalesce(max(sequence), 0) FROM events WHERE true
        ON CONFLICT (key) DO NOTHING;
    """,
    # Bodies refused for their content, kept for an operator (quarantine list | replay | drop).
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        id {serial_key},
        body_hash {text} NOT NULL UNIQUE,            -- sha256 of the body: a retry counts, it is not kept again
        received_us {int8} NOT NULL,
        last_us {int8} NOT NULL,
        peer {text} NOT NULL,
        status {int2} NOT NULL,                      -- the HTTP status answered
        reason {text} NOT NULL,
        detail {text} NOT NULL,
        attempts {int4} NOT NULL,
        size {int4} NOT NULL,
        body {bytes} NOT NULL
    );
    CREATE INDEX IF NOT EXISTS quarantine_by_last ON quarantine (last_us, id);
    INSERT INTO meta (key, value) VALUES ('quarantine_bytes', 0) ON CONFLICT (key) DO NOTHING;
    """,
    # Inbound messages (replies): entries of the same log, their sequences from the same counter.
    """
    CREATE TABLE IF NOT EXISTS inbound (
        sequence {int8} PRIMARY KEY,
        content_key {text} NOT NULL UNIQUE,          -- domain.inbound_key: a retry is recognised by its content
        campaign_tracking_id {text} NOT NULL,        -- '' when it has none
        reference_tracking_id {text} NOT NULL,       -- the message it answers, '' when unknown
        receive_us {int8} NOT NULL,
        message {bytes} NOT NULL                     -- InboundMessage, serialized protobuf
    );
    CREATE INDEX IF NOT EXISTS inbound_by_campaign ON inbound (campaign_tracking_id, sequence);
    CREATE INDEX IF NOT EXISTS inbound_by_reference ON inbound (reference_tracking_id, sequence);
    ALTER TABLE quarantine ADD COLUMN kind {text} NOT NULL DEFAULT 'status';
    """,
    # Campaign questions: each message's current status in its row, counts per campaign and status kept as
    # events are stored, and each update's previous current status (to keep counts live from a stream).
    """
    ALTER TABLE events ADD COLUMN previous_status {int2} NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN status {int2} NOT NULL DEFAULT 0;
    UPDATE messages SET status = (SELECT e.status FROM events e WHERE e.sequence = messages.current_sequence);
    CREATE INDEX IF NOT EXISTS messages_by_campaign_status ON messages (campaign_tracking_id, status);
    CREATE TABLE IF NOT EXISTS campaign_counts (
        campaign_tracking_id {text} NOT NULL,
        status {int2} NOT NULL,
        messages {int8} NOT NULL,
        PRIMARY KEY (campaign_tracking_id, status)
    ) {without_rowid};
    INSERT INTO campaign_counts SELECT campaign_tracking_id, status, count(*) FROM messages GROUP BY 1, 2;
    CREATE TABLE IF NOT EXISTS campaigns (
        campaign_tracking_id {text} PRIMARY KEY,
        first_update_us {int8} NOT NULL,
        latest_update_us {int8} NOT NULL
    ) {without_rowid};
    INSERT INTO campaigns SELECT campaign_tracking_id, min(update_us), max(update_us) FROM events GROUP BY 1;
    """,
    # Reconciliation with Routee's tracking API: where each event came from, and when each message whose status
    # is not final may be looked up (NULL: never; a final status, or given up).
    """
    ALTER TABLE events ADD COLUMN source {int2} NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN check_from_us {int8};
    ALTER TABLE messages ADD COLUMN checks {int4} NOT NULL DEFAULT 0;
    UPDATE messages SET check_from_us = (SELECT e.receive_us FROM events e WHERE e.sequence = messages.current_sequence)
        WHERE status NOT IN ({final_statuses});
    CREATE INDEX IF NOT EXISTS messages_to_check ON messages (check_from_us) WHERE check_from_us IS NOT NULL;
    """,
    # Snapshots and lists walk a campaign's messages in tracking id order: one index serves both (it replaces the
    # campaign's index, a prefix of it, so a callback costs no more index writes).
    """
    CREATE INDEX IF NOT EXISTS messages_by_campaign_and_id ON messages (campaign_tracking_id, tracking_id);
    DROP INDEX IF EXISTS messages_by_campaign;
    """,
    # Personal data stays out of the planner's statistics: PostgreSQL would sample these columns' values into
    # its catalog, where an erasure cannot reach them (nothing plans on them).
    """
    {no_statistics};
    """,
    # SMS: each event's channel and part, and the message's status after it (what the parts make it, for an SMS);
    # each SMS part's current status; ranks make room for SENT, between QUEUED and DELIVERED. An event stored
    # before that became current left the message with its own status; of a late one it is not known (0).
    """
    ALTER TABLE events ADD COLUMN channel {int2} NOT NULL DEFAULT 1;
    ALTER TABLE events ADD COLUMN part {int2} NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN message_status {int2} NOT NULL DEFAULT 0;
    UPDATE events SET rank = CASE WHEN rank >= 2 THEN rank + 1 ELSE rank END,
        message_status = CASE WHEN was_current THEN status ELSE 0 END;
    ALTER TABLE messages ADD COLUMN channel {int2} NOT NULL DEFAULT 1;
    UPDATE messages SET rank = rank + 1 WHERE rank >= 2;
    ALTER TABLE inbound ADD COLUMN channel {int2} NOT NULL DEFAULT 1;
    CREATE TABLE IF NOT EXISTS sms_parts (
        tracking_id {text} NOT NULL,
        part {int2} NOT NULL,
        parts {int2} NOT NULL,                       -- how many parts the message has, by this part's report
        sms_id {text} NOT NULL,                      -- the part's id (smsId)
        status {int2} NOT NULL,
        status_name {text} NOT NULL,                 -- as Routee sent it
        update_us {int8} NOT NULL,
        rank {int2} NOT NULL,
        current_sequence {int8} NOT NULL,            -- the part's current event
        PRIMARY KEY (tracking_id, part)
    ) {without_rowid};
    """,
)

#: PostgreSQL databases made before the list was one numbered their versions one lower from the second on: their
#: first script made the log's head as well (``postgres.migrate`` reads their ``schema_version`` that way).
POSTGRES_LEGACY_OFFSET = 1


def statements(script: str, dialect: Dialect) -> list[str]:
    """The statements of one migration as ``dialect`` spells them."""
    final = ", ".join(str(status) for status in sorted(FINAL_STATUSES))
    spelled = script.format(final_statuses=final, **dialect.types)
    return [statement for statement in spelled.split(";") if statement.strip()]


def pending(version: int, migrations: Sequence[str] = MIGRATIONS) -> list[tuple[int, str]]:
    """The migrations after ``version``, each with the version it makes."""
    return list(enumerate(migrations[version:], start=version + 1))
