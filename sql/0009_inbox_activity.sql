-- 0009: what the inbox (protocol 1.2) needs to list a user's chats by activity.
--
-- A chat's activity is the created_at of its newest message (highest seq),
-- or the chat's own creation time when it has none. It is kept on the chat
-- row, in chats.last_activity (NULL: no message; read it as
-- coalesce(last_activity, created_at)), with the newest message's sender in
-- chats.last_sender_id (NULL: unknown since a delete; then the list looks),
-- by the triggers that already keep chats.last_seq, so a single-row insert
-- writes the chat row exactly as often as before (once) and only two more
-- columns of it. The sender lets the inbox tell "something unread" without
-- reading messages when the newest is someone else's and past the read mark:
--
--  * chat_relay_assign_seq() (0007's function, one change): the UPDATE that
--    numbers the first row of a chat in a transaction also stores the row's
--    created_at and sender. Its give-back path (a retried id or
--    client_generated_id) restores the newest message's created_at with the
--    number (and forgets the sender).
--  * chat_relay_store_last_seq() (0006's statement trigger, one change):
--    where it stores last_seq for a statement's rows, it stores the
--    created_at and sender of the row with that seq too.
--  * chat_relay_deleted_activity(), new: after a DELETE statement, the chats
--    it touched get the created_at of their newest remaining message (NULL
--    when none is left), and an unknown sender. Deletes pay for this;
--    inserts do not.
--
-- chats gets created_at when an older schema lacks it (existing rows read
-- the migration's time), and chat_participants an index by user, which is
-- how a user's chats are listed. No index on last_activity: the chat row
-- is updated by every insert, and an unindexed column keeps those updates
-- HOT. Existing chats are backfilled from their newest message (one probe of
-- the (chat_id, seq) index per chat, inside this migration's transaction).
--
-- Left as it is: an UPDATE of the newest message's created_at or sender_id,
-- and TRUNCATE, do not move last_activity or last_sender_id.
--
-- Re-running is safe (IF NOT EXISTS, CREATE OR REPLACE, DROP TRIGGER IF
-- EXISTS; the backfill only fills NULLs where a message exists).
--
-- Rollback: DROP TRIGGER chat_relay_deleted_activity ON chat_messages;
--           DROP FUNCTION chat_relay_deleted_activity();
--           run 0007's and 0006's CREATE OR REPLACE FUNCTION for
--           chat_relay_assign_seq() and chat_relay_store_last_seq() again;
--           DROP INDEX chat_participants_user_id_idx;
--           ALTER TABLE chats DROP COLUMN last_activity, DROP COLUMN last_sender_id;

ALTER TABLE chats ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE chats ADD COLUMN IF NOT EXISTS last_activity timestamptz;
ALTER TABLE chats ADD COLUMN IF NOT EXISTS last_sender_id uuid;

CREATE INDEX IF NOT EXISTS chat_participants_user_id_idx ON chat_participants (user_id);

UPDATE chats c SET last_activity = n.created_at,
       last_sender_id = CASE WHEN n.seq = c.last_seq THEN n.sender_id END
  FROM (SELECT c2.id, m.created_at, m.sender_id, m.seq
          FROM chats c2
          JOIN LATERAL (SELECT m.created_at, m.sender_id, m.seq FROM chat_messages m
                         WHERE m.chat_id = c2.id ORDER BY m.seq DESC LIMIT 1) m ON true
         WHERE c2.last_activity IS NULL AND c2.last_seq > 0) n
 WHERE c.id = n.id;

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
        -- The chat's stored last_seq is current: lock and number in one go
        -- (and this row, if it is stored, is the chat's newest).
        UPDATE %1$I.chats c
           SET last_seq = c.last_seq + 1, last_activity = NEW.created_at, last_sender_id = NEW.sender_id
         WHERE c.id = NEW.chat_id
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
        -- A retry takes no number (give back the one just counted, and the
        -- activity with it).
        -- Stored seqs are never negative, so only the primary key or the
        -- client_generated_id index can object to this row.
        IF counted THEN
            UPDATE %1$I.chats c SET last_seq = last, last_sender_id = NULL,
                   last_activity = (SELECT m.created_at FROM %1$I.chat_messages m
                                     WHERE m.chat_id = NEW.chat_id AND m.seq >= 0
                                     ORDER BY m.seq DESC LIMIT 1)
             WHERE c.id = NEW.chat_id;
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

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.chat_relay_store_last_seq()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
    IF current_setting('chat_relay.lagging', true) IS DISTINCT FROM 't' THEN
        RETURN NULL;
    END IF;
    UPDATE %1$I.chats c SET last_seq = n.seq, last_activity = n.created_at, last_sender_id = n.sender_id
      FROM (SELECT DISTINCT ON (r.chat_id) r.chat_id, r.seq, r.created_at, r.sender_id
              FROM chat_relay_new_rows r ORDER BY r.chat_id, r.seq DESC) n
     WHERE c.id = n.chat_id AND c.last_seq < n.seq;
    PERFORM set_config('chat_relay.lagging', 'f', true);
    RETURN NULL;
END
$body$
$fn$, current_schema());

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.chat_relay_deleted_activity()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
    UPDATE %1$I.chats c
       SET last_sender_id = NULL,
           last_activity = (SELECT m.created_at FROM %1$I.chat_messages m
                             WHERE m.chat_id = c.id ORDER BY m.seq DESC LIMIT 1)
     WHERE c.id IN (SELECT DISTINCT o.chat_id FROM chat_relay_old_rows o);
    RETURN NULL;
END
$body$
$fn$, current_schema());
END $migration$;

REVOKE EXECUTE ON FUNCTION chat_relay_assign_seq() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION chat_relay_store_last_seq() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION chat_relay_deleted_activity() FROM PUBLIC;

DROP TRIGGER IF EXISTS chat_relay_deleted_activity ON chat_messages;
CREATE TRIGGER chat_relay_deleted_activity
    AFTER DELETE ON chat_messages
    REFERENCING OLD TABLE AS chat_relay_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chat_relay_deleted_activity();
