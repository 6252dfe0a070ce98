-- 0008: a message cannot move to another chat.
--
-- UPDATE chat_messages SET chat_id = ... kept the row's seq, a number of the
-- chat it came from. In the target chat that seq is either taken (the UPDATE
-- fails on chat_messages_chat_id_seq_key) or not yet handed out: then the
-- target's subscribers get a message out of order (or skip the ones the relay
-- had to hold for it), and a later insert into the target gets that seq from
-- chats.last_seq and fails on the unique index. The source chat is left with
-- a hole.
--
-- Renumbering the row in the target would mean a message's seq changes under
-- clients that already have it, and a move would have to lock two chats in
-- some order. Refusing is simpler and safe: a BEFORE UPDATE row trigger
-- raises SQLSTATE 0A000 (feature_not_supported) when chat_id changes, with a
-- hint that says what to do instead: in one transaction, DELETE the message
-- from its chat and INSERT it into the target chat (the same id may be used
-- again; it gets the target's next seq). Updates that leave chat_id as it is are not affected (the
-- trigger's WHEN clause does not even call the function for them).
--
-- Re-running is safe (CREATE OR REPLACE, DROP TRIGGER IF EXISTS).
--
-- Rollback: DROP TRIGGER chat_relay_refuse_chat_move ON chat_messages;
--           DROP FUNCTION chat_relay_refuse_chat_move();

DO $migration$
BEGIN
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.chat_relay_refuse_chat_move()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
    RAISE EXCEPTION 'chat_messages: message %% cannot move from chat %% to chat %%: its seq belongs to the chat it was sent in',
            OLD.id, OLD.chat_id, NEW.chat_id
        USING ERRCODE = 'feature_not_supported',
              HINT = 'In one transaction, DELETE the message from its chat and INSERT it into the target chat (it may keep its id; it gets that chat''s next seq).';
END
$body$
$fn$, current_schema());
END $migration$;

REVOKE EXECUTE ON FUNCTION chat_relay_refuse_chat_move() FROM PUBLIC;

DROP TRIGGER IF EXISTS chat_relay_refuse_chat_move ON chat_messages;
CREATE TRIGGER chat_relay_refuse_chat_move
    BEFORE UPDATE ON chat_messages
    FOR EACH ROW WHEN (NEW.chat_id IS DISTINCT FROM OLD.chat_id)
    EXECUTE FUNCTION chat_relay_refuse_chat_move();
