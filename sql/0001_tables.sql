-- 0001: the chat tables and the columns chat-relay needs.
--
-- Works on an empty database (creates the tables) and on a live chat database
-- that already has chats / chat_participants / chat_messages without the new
-- columns (adds them). `seq` is added NULLABLE here; 0002 backfills it and
-- 0003 makes it NOT NULL, so that no step holds a long lock on a big table.
--
-- Rollback: ALTER TABLE chat_messages DROP COLUMN seq, DROP COLUMN client_generated_id,
--           DROP COLUMN status; ALTER TABLE chats DROP COLUMN last_seq;
--           ALTER TABLE chat_participants DROP COLUMN last_delivered_seq, DROP COLUMN last_read_seq;
--           (tables created here on an empty database can simply be dropped.)

CREATE TABLE IF NOT EXISTS chats (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS chat_participants (
    chat_id uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);

CREATE TABLE IF NOT EXISTS chat_messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    chat_id uuid NOT NULL REFERENCES chats (id),
    sender_id uuid NOT NULL,
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Adding a column with a constant default is a catalog-only change since
-- PostgreSQL 11: no table rewrite, only a brief ACCESS EXCLUSIVE lock.
ALTER TABLE chats ADD COLUMN IF NOT EXISTS last_seq bigint NOT NULL DEFAULT 0;

ALTER TABLE chat_participants
    ADD COLUMN IF NOT EXISTS last_delivered_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_read_seq bigint NOT NULL DEFAULT 0;

ALTER TABLE chat_messages
    ADD COLUMN IF NOT EXISTS seq bigint,
    ADD COLUMN IF NOT EXISTS client_generated_id uuid,
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'sent';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'chat_messages_status_check'
                     AND conrelid = 'chat_messages'::regclass) THEN
        -- NOT VALID: existing rows all carry the default 'sent'; skip the scan.
        ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_status_check
            CHECK (status IN ('sent', 'delivered', 'read')) NOT VALID;
    END IF;
END $$;

-- Serves the backfill in 0002 (per chat, in (created_at, id) order).
CREATE INDEX IF NOT EXISTS chat_relay_backfill_order
    ON chat_messages (chat_id, created_at, id) WHERE seq IS NULL;

-- One step of the seq backfill: numbers up to `batch` rows of ONE chat that
-- still lack a seq, continuing after the highest seq the chat already has.
-- Returns how many rows it numbered (0 when nothing is left).
CREATE OR REPLACE FUNCTION chat_relay_backfill_seq_step(batch integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    target uuid;
    base bigint;
    n integer;
BEGIN
    SELECT chat_id INTO target FROM chat_messages WHERE seq IS NULL LIMIT 1;
    IF target IS NULL THEN
        RETURN 0;
    END IF;
    SELECT coalesce(max(seq), 0) INTO base FROM chat_messages WHERE chat_id = target;
    WITH todo AS (
        SELECT id, row_number() OVER (ORDER BY created_at, id) AS rn
        FROM (SELECT id, created_at FROM chat_messages
              WHERE chat_id = target AND seq IS NULL
              ORDER BY created_at, id
              LIMIT batch
              FOR UPDATE) picked
    )
    UPDATE chat_messages m SET seq = base + todo.rn
    FROM todo WHERE m.id = todo.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
