-- 0005: the delivery functions and replica identity for the published tables.
--
-- Watermarks only move forward and are clamped to the chat's last_seq, so an
-- ack for a seq that does not exist yet cannot pre-mark future messages.
-- Status flips touch only rows that actually change (other senders' messages
-- between the old and the new watermark that are still behind), which keeps
-- the WAL, and so every subscriber's `update` traffic, minimal.
-- REPLICA IDENTITY FULL makes updates and deletes carry the old row, which the
-- relay needs to know which chat and which participant a change belongs to.
--
-- Rollback: DROP FUNCTION mark_messages_as_delivered(uuid, uuid, bigint),
--           mark_messages_as_read(uuid, uuid, bigint), get_unread_count(uuid, uuid),
--           get_latest_seq(uuid);
--           ALTER TABLE chat_messages REPLICA IDENTITY DEFAULT;
--           ALTER TABLE chat_participants REPLICA IDENTITY DEFAULT;

CREATE OR REPLACE FUNCTION get_latest_seq(p_chat_id uuid)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT last_seq FROM chats WHERE id = p_chat_id), 0);
$$;

-- Returns the participant's delivered watermark after the call (NULL when the
-- user is not a participant).
CREATE OR REPLACE FUNCTION mark_messages_as_delivered(p_chat_id uuid, p_user_id uuid, p_up_to_seq bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    target bigint;
    old_mark bigint;
    new_mark bigint;
BEGIN
    target := least(p_up_to_seq, get_latest_seq(p_chat_id));
    SELECT last_delivered_seq INTO old_mark FROM chat_participants
        WHERE chat_id = p_chat_id AND user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF target <= old_mark THEN
        RETURN old_mark;
    END IF;
    UPDATE chat_participants SET last_delivered_seq = target
        WHERE chat_id = p_chat_id AND user_id = p_user_id
        RETURNING last_delivered_seq INTO new_mark;
    UPDATE chat_messages SET status = 'delivered'
        WHERE chat_id = p_chat_id AND seq > old_mark AND seq <= target
          AND sender_id <> p_user_id AND status = 'sent';
    RETURN new_mark;
END $$;

-- Reading implies delivery: moves both watermarks. Returns the read watermark.
CREATE OR REPLACE FUNCTION mark_messages_as_read(p_chat_id uuid, p_user_id uuid, p_up_to_seq bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    target bigint;
    old_read bigint;
    old_delivered bigint;
BEGIN
    target := least(p_up_to_seq, get_latest_seq(p_chat_id));
    SELECT last_read_seq, last_delivered_seq INTO old_read, old_delivered FROM chat_participants
        WHERE chat_id = p_chat_id AND user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF target <= old_read THEN
        RETURN old_read;
    END IF;
    UPDATE chat_participants
        SET last_read_seq = target,
            last_delivered_seq = greatest(last_delivered_seq, target)
        WHERE chat_id = p_chat_id AND user_id = p_user_id;
    UPDATE chat_messages SET status = 'read'
        WHERE chat_id = p_chat_id AND seq > old_read AND seq <= target
          AND sender_id <> p_user_id AND status <> 'read';
    RETURN target;
END $$;

CREATE OR REPLACE FUNCTION get_unread_count(p_chat_id uuid, p_user_id uuid)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM chat_messages m
    JOIN chat_participants p ON p.chat_id = m.chat_id AND p.user_id = p_user_id
    WHERE m.chat_id = p_chat_id AND m.seq > p.last_read_seq AND m.sender_id <> p_user_id;
$$;

ALTER TABLE chat_messages REPLICA IDENTITY FULL;
ALTER TABLE chat_participants REPLICA IDENTITY FULL;
