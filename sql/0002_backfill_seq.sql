-- chat-relay: no-transaction
-- 0002: number existing messages per chat in (created_at, id) order.
--
-- Runs outside one big transaction: the procedure commits after every batch of
-- 5000 rows, so a large table is never locked as a whole and the live app keeps
-- inserting. Rows inserted meanwhile (seq still NULL) are numbered by later
-- batches, or by 0003 under a short lock. Safe to re-run: it only touches rows
-- whose seq is NULL.
--
-- Rollback: UPDATE chat_messages SET seq = NULL; (only before 0003 ran)

CREATE OR REPLACE PROCEDURE chat_relay_backfill_seq(batch integer)
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        EXIT WHEN chat_relay_backfill_seq_step(batch) = 0;
        COMMIT;
    END LOOP;
END $$;

CALL chat_relay_backfill_seq(5000);
