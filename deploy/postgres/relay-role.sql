-- The least-privilege role for `chat-relay serve` (run `migrate` as the tables' owner).
-- psql -v relay_password='…' -f deploy/postgres/relay-role.sql
-- Replication plus exactly what the relay's queries touch; not superuser.
CREATE ROLE chat_relay LOGIN REPLICATION PASSWORD :'relay_password';
GRANT USAGE ON SCHEMA public TO chat_relay;
GRANT SELECT ON chats, chat_participants, chat_messages TO chat_relay;
-- send (the seq triggers run with their owner's rights: nothing on chats)
GRANT INSERT ON chat_messages TO chat_relay;
-- delivered/read marking
GRANT UPDATE (status) ON chat_messages TO chat_relay;
GRANT UPDATE (last_delivered_seq, last_read_seq) ON chat_participants TO chat_relay;
