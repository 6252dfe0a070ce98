-- 0007: an insert whose id is taken burns no seq.
--
-- 0006's trigger numbers a row before PostgreSQL looks at the primary key, so
-- INSERT ... ON CONFLICT (id) DO NOTHING (or DO UPDATE, or a bare ON CONFLICT
-- DO NOTHING) that hit an existing id used up a seq that no row ever carries:
-- a hole in the chat. Every hole makes the relay hold that chat's later
-- messages until it has asked the table, and subscribers see a seq skipped.
--
-- Now a row whose id already exists is treated like a repeated
-- client_generated_id in 0006: it takes no number (one just counted is given
-- back), and goes to the indexes with a placeholder seq that no stored row can
-- have (stored seqs are never negative). The primary key then either raises
-- 23505 naming chat_messages_pkey, as before, or, under ON CONFLICT, skips the
-- row or updates the existing one (whose seq stays). The existing row is
-- locked KEY SHARE meanwhile, so a concurrent delete cannot let the
-- placeholder through. Only chat_relay_assign_seq() changes: the id check is
-- one primary-key probe per row; everything else is 0006's function as it was.
-- (Left as it was: two concurrent transactions inserting the same new id
-- into two different chats; the one that loses the race costs its chat a
-- number, as any insert did before.)
--
-- Re-running is safe (CREATE OR REPLACE).
--
-- Rollback: run 0006's first CREATE OR REPLACE FUNCTION chat_relay_assign_seq()
--           (the DO block's first EXECUTE) again.

DO $migration$
BEGIN
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.chat_relay_assign_seq()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    prefix text := NEW.chat_id::text || ':';
    cached text := current_setting('chat_relay.seq', true);
    hit boolean := cached IS NOT NULL AND starts_with(cached, prefix);
    flagged boolean := coalesce(current_setting('chat_relay.lagging', true), '') = 't';
    counted boolean := false;
    last bigint;
    twin bigint;
BEGIN
    IF hit THEN
        last := substr(cached, length(prefix) + 1)::bigint;
    ELSIF NOT flagged THEN
        -- The chat's stored last_seq is current: lock and number in one go.
        UPDATE %1$I.chats c SET last_seq = c.last_seq + 1 WHERE c.id = NEW.chat_id
            RETURNING c.last_seq - 1 INTO last;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'chat %% does not exist', NEW.chat_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        counted := true;
    ELSE
        -- Some chat's last_seq lags this statement: read where this one stands.
        SELECT c.last_seq INTO last FROM %1$I.chats c WHERE c.id = NEW.chat_id FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'chat %% does not exist', NEW.chat_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        last := greatest(last, coalesce(
            (SELECT max(m.seq) FROM %1$I.chat_messages m WHERE m.chat_id = NEW.chat_id), 0));
    END IF;
    -- A row whose id is taken (in any chat) will never be stored as a new
    -- message: the primary key refuses it, or ON CONFLICT skips or updates.
    SELECT m.seq INTO twin FROM %1$I.chat_messages m WHERE m.id = NEW.id FOR KEY SHARE;
    IF NOT FOUND AND NEW.client_generated_id IS NOT NULL THEN
        SELECT m.seq INTO twin FROM %1$I.chat_messages m
         WHERE m.chat_id = NEW.chat_id AND m.client_generated_id = NEW.client_generated_id
           FOR KEY SHARE;
    END IF;
    IF FOUND THEN
        -- A retry takes no number (give back the one just counted).
        -- Stored seqs are never negative, so only the primary key or the
        -- client_generated_id index can object to this row.
        IF counted THEN
            UPDATE %1$I.chats c SET last_seq = last WHERE c.id = NEW.chat_id;
        END IF;
        PERFORM set_config('chat_relay.seq', prefix || last, true);
        NEW.seq := -1 - twin;
        RETURN NEW;
    END IF;
    last := last + 1;
    IF NOT counted AND NOT flagged THEN
        PERFORM set_config('chat_relay.lagging', 't', true);
    END IF;
    PERFORM set_config('chat_relay.seq', prefix || last, true);
    NEW.seq := last;
    RETURN NEW;
END
$body$
$fn$, current_schema());
END $migration$;

REVOKE EXECUTE ON FUNCTION chat_relay_assign_seq() FROM PUBLIC;
