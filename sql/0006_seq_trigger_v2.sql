-- 0006: seq assignment that existing app SQL can live with.
--
-- 0003's trigger was correct for one row at a time, but:
--  * it wrote chats.last_seq once per row. Inside one transaction every update
--    of a row walks all of that row's earlier versions, so a single-statement
--    bulk insert into one chat was quadratic (40k rows: 55 s);
--  * it locked the chat row FOR UPDATE, which conflicts with the FOR KEY SHARE
--    lock a foreign key check takes: "insert a participant, then a message" in
--    concurrent transactions deadlocked;
--  * it raised unique_violation itself for a repeated client_generated_id,
--    before an ON CONFLICT arbiter is consulted, so
--    INSERT ... ON CONFLICT (chat_id, client_generated_id) DO NOTHING failed;
--  * it named tables unqualified with no pinned search_path: a temporary table
--    called chats could choose the seq.
--
-- Now the first row of a chat in a transaction takes its seq as it always
-- did, in one statement: UPDATE chats SET last_seq = last_seq + 1 RETURNING
-- (a FOR NO KEY UPDATE row lock: compatible with foreign-key KEY SHARE locks,
-- exclusive among writers, held until commit, so commit order is still seq
-- order within a chat), and the transaction remembers where the chat stands
-- (one custom setting, undone with its savepoint). Further rows of that chat
-- count on from there without touching chats, and flag the statement; at the
-- end of a flagged statement an AFTER STATEMENT trigger stores last_seq once
-- per chat from the statement's new rows. An unflagged statement (every
-- single-row insert) ends at once, so a plain insert costs what it did and a
-- bulk insert is linear. Rows of chats interleaved within one flagged
-- statement read where their chat stands instead (its lock is held; rows this
-- statement inserted are visible). A repeated client_generated_id takes no
-- number: the row is handed to the unique index with a placeholder seq that
-- cannot collide, and the index either raises 23505 naming
-- chat_messages_chat_id_client_generated_id_key or, under ON CONFLICT DO
-- NOTHING, skips the row. The twin is locked KEY SHARE meanwhile, so a
-- concurrent delete cannot let the placeholder through.
--
-- Both trigger functions are SECURITY DEFINER with search_path pinned to
-- pg_catalog, pg_temp and every name schema-qualified (the schema migrate ran
-- in): roles that insert need only INSERT on chat_messages, and nothing on their
-- search path can stand in for our tables. The delivery functions of 0005 are
-- recreated with the same pinning (they keep the caller's rights).
--
-- Rollback: DROP TRIGGER chat_relay_store_last_seq ON chat_messages;
--           DROP FUNCTION chat_relay_store_last_seq();
--           then run 0003's CREATE OR REPLACE FUNCTION chat_relay_assign_seq()
--           and 0005's four CREATE OR REPLACE FUNCTION statements again.

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
    IF NEW.client_generated_id IS NOT NULL THEN
        SELECT m.seq INTO twin FROM %1$I.chat_messages m
         WHERE m.chat_id = NEW.chat_id AND m.client_generated_id = NEW.client_generated_id
           FOR KEY SHARE;
        IF FOUND THEN
            -- A retry takes no number (give back the one just counted).
            -- Stored seqs are never negative, so only the
            -- client_generated_id index can object to this row.
            IF counted THEN
                UPDATE %1$I.chats c SET last_seq = last WHERE c.id = NEW.chat_id;
            END IF;
            PERFORM set_config('chat_relay.seq', prefix || last, true);
            NEW.seq := -1 - twin;
            RETURN NEW;
        END IF;
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

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.chat_relay_store_last_seq()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
    IF current_setting('chat_relay.lagging', true) IS DISTINCT FROM 't' THEN
        RETURN NULL;
    END IF;
    UPDATE %1$I.chats c SET last_seq = n.max_seq
      FROM (SELECT chat_id, max(seq) AS max_seq FROM chat_relay_new_rows GROUP BY chat_id) n
     WHERE c.id = n.chat_id AND c.last_seq < n.max_seq;
    PERFORM set_config('chat_relay.lagging', 'f', true);
    RETURN NULL;
END
$body$
$fn$, current_schema());

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.get_latest_seq(p_chat_id uuid)
RETURNS bigint LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $body$
    SELECT coalesce((SELECT last_seq FROM %1$I.chats WHERE id = p_chat_id), 0);
$body$
$fn$, current_schema());

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.mark_messages_as_delivered(p_chat_id uuid, p_user_id uuid, p_up_to_seq bigint)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    target bigint;
    old_mark bigint;
    new_mark bigint;
BEGIN
    target := least(p_up_to_seq, %1$I.get_latest_seq(p_chat_id));
    SELECT last_delivered_seq INTO old_mark FROM %1$I.chat_participants
        WHERE chat_id = p_chat_id AND user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF target <= old_mark THEN
        RETURN old_mark;
    END IF;
    UPDATE %1$I.chat_participants SET last_delivered_seq = target
        WHERE chat_id = p_chat_id AND user_id = p_user_id
        RETURNING last_delivered_seq INTO new_mark;
    UPDATE %1$I.chat_messages SET status = 'delivered'
        WHERE chat_id = p_chat_id AND seq > old_mark AND seq <= target
          AND sender_id <> p_user_id AND status = 'sent';
    RETURN new_mark;
END
$body$
$fn$, current_schema());

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.mark_messages_as_read(p_chat_id uuid, p_user_id uuid, p_up_to_seq bigint)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    target bigint;
    old_read bigint;
    old_delivered bigint;
BEGIN
    target := least(p_up_to_seq, %1$I.get_latest_seq(p_chat_id));
    SELECT last_read_seq, last_delivered_seq INTO old_read, old_delivered FROM %1$I.chat_participants
        WHERE chat_id = p_chat_id AND user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF target <= old_read THEN
        RETURN old_read;
    END IF;
    UPDATE %1$I.chat_participants
        SET last_read_seq = target,
            last_delivered_seq = greatest(last_delivered_seq, target)
        WHERE chat_id = p_chat_id AND user_id = p_user_id;
    UPDATE %1$I.chat_messages SET status = 'read'
        WHERE chat_id = p_chat_id AND seq > old_read AND seq <= target
          AND sender_id <> p_user_id AND status <> 'read';
    RETURN target;
END
$body$
$fn$, current_schema());

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.get_unread_count(p_chat_id uuid, p_user_id uuid)
RETURNS bigint LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $body$
    SELECT count(*) FROM %1$I.chat_messages m
    JOIN %1$I.chat_participants p ON p.chat_id = m.chat_id AND p.user_id = p_user_id
    WHERE m.chat_id = p_chat_id AND m.seq > p.last_read_seq AND m.sender_id <> p_user_id;
$body$
$fn$, current_schema());
END $migration$;

-- Definer-rights trigger functions are for these triggers only: nobody may
-- attach them to a table of their own.
REVOKE EXECUTE ON FUNCTION chat_relay_assign_seq() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION chat_relay_store_last_seq() FROM PUBLIC;

DROP TRIGGER IF EXISTS chat_relay_store_last_seq ON chat_messages;
CREATE TRIGGER chat_relay_store_last_seq
    AFTER INSERT ON chat_messages
    REFERENCING NEW TABLE AS chat_relay_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chat_relay_store_last_seq();
