-- chat-relay: no-transaction
-- 0004: make seq NOT NULL and unique per chat without blocking writers for a scan.
--
-- VALIDATE CONSTRAINT takes only SHARE UPDATE EXCLUSIVE (writes continue);
-- SET NOT NULL then reuses the validated check instead of scanning under an
-- exclusive lock. The unique indexes are built CONCURRENTLY and attached as
-- constraints. An index left INVALID by an interrupted earlier run is dropped
-- and rebuilt, so re-running is safe. (Edited after release to make the first
-- statement conditional; the released checksum is still accepted.)
--
-- (chat_id, seq) also serves keyset pagination newest-first
-- (WHERE chat_id = $1 AND seq < $2 ORDER BY seq DESC): a btree is read
-- backwards just as fast, so no separate DESC index is kept.
--
-- Rollback: ALTER TABLE chat_messages DROP CONSTRAINT chat_messages_chat_id_seq_key,
--           DROP CONSTRAINT chat_messages_chat_id_client_generated_id_key,
--           ALTER COLUMN seq DROP NOT NULL;

-- Every statement can run again after a failure at any later one: the check
-- is validated only while it exists (a re-run after it was dropped finds the
-- column NOT NULL already, and SET NOT NULL is then a no-op).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint
               WHERE conname = 'chat_messages_seq_not_null'
                 AND conrelid = 'chat_messages'::regclass) THEN
        ALTER TABLE chat_messages VALIDATE CONSTRAINT chat_messages_seq_not_null;
    END IF;
END $$;
ALTER TABLE chat_messages ALTER COLUMN seq SET NOT NULL;
ALTER TABLE chat_messages DROP CONSTRAINT IF EXISTS chat_messages_seq_not_null;
ALTER TABLE chat_messages VALIDATE CONSTRAINT chat_messages_status_check;
DROP INDEX IF EXISTS chat_relay_backfill_order;

DO $$
DECLARE idx text;
BEGIN
    FOR idx IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE NOT i.indisvalid
                 AND c.relname IN ('chat_messages_chat_id_seq_key',
                                   'chat_messages_chat_id_client_generated_id_key') LOOP
        EXECUTE format('DROP INDEX %I', idx);
    END LOOP;
END $$;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS chat_messages_chat_id_seq_key
    ON chat_messages (chat_id, seq);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS chat_messages_chat_id_client_generated_id_key
    ON chat_messages (chat_id, client_generated_id);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'chat_messages_chat_id_seq_key') THEN
        ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_chat_id_seq_key
            UNIQUE USING INDEX chat_messages_chat_id_seq_key;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'chat_messages_chat_id_client_generated_id_key') THEN
        ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_chat_id_client_generated_id_key
            UNIQUE USING INDEX chat_messages_chat_id_client_generated_id_key;
    END IF;
END $$;
