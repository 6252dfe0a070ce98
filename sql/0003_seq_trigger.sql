-- 0003: from now on the database assigns seq: a BEFORE INSERT trigger that
-- increments chats.last_seq under the chat row's lock.
--
-- Holding the chat row lock until commit serialises inserts per chat, so within
-- a chat commit order equals seq order, and a rolled-back insert also rolls back
-- its increment: no holes. Also numbers rows that slipped in after 0002 (under
-- a SHARE ROW EXCLUSIVE lock that blocks writers only for that remainder), sets
-- chats.last_seq, and adds a NOT VALID not-null check that 0004 validates.
--
-- Rollback: DROP TRIGGER chat_relay_assign_seq ON chat_messages;
--           DROP FUNCTION chat_relay_assign_seq();
--           ALTER TABLE chat_messages DROP CONSTRAINT chat_messages_seq_not_null;

LOCK TABLE chat_messages IN SHARE ROW EXCLUSIVE MODE;

DO $$
BEGIN
    WHILE chat_relay_backfill_seq_step(5000) > 0 LOOP
    END LOOP;
END $$;

UPDATE chats c SET last_seq = m.max_seq
FROM (SELECT chat_id, max(seq) AS max_seq FROM chat_messages GROUP BY chat_id) m
WHERE c.id = m.chat_id AND c.last_seq IS DISTINCT FROM m.max_seq;

CREATE OR REPLACE FUNCTION chat_relay_assign_seq()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Lock the chat first: every insert into this chat queues here until the
    -- previous one commits or rolls back.
    PERFORM 1 FROM chats WHERE id = NEW.chat_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chat % does not exist', NEW.chat_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- Under the lock, a committed twin of this client_generated_id is visible;
    -- refuse before taking a seq, so a retried send never burns a number.
    IF NEW.client_generated_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM chat_messages
        WHERE chat_id = NEW.chat_id AND client_generated_id = NEW.client_generated_id
    ) THEN
        RAISE EXCEPTION 'duplicate client_generated_id % in chat %',
                NEW.client_generated_id, NEW.chat_id
            USING ERRCODE = 'unique_violation',
                  CONSTRAINT = 'chat_messages_chat_id_client_generated_id_key';
    END IF;
    UPDATE chats SET last_seq = last_seq + 1 WHERE id = NEW.chat_id
        RETURNING last_seq INTO NEW.seq;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS chat_relay_assign_seq ON chat_messages;
CREATE TRIGGER chat_relay_assign_seq
    BEFORE INSERT ON chat_messages
    FOR EACH ROW EXECUTE FUNCTION chat_relay_assign_seq();

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = 'chat_messages_seq_not_null'
                     AND conrelid = 'chat_messages'::regclass) THEN
        ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_seq_not_null
            CHECK (seq IS NOT NULL) NOT VALID;
    END IF;
END $$;
