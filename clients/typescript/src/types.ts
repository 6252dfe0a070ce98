/** Wire types of the chat-relay protocol (1.1) and the client's own. */

/** A stored row of `chat_messages`, as the relay sends it (every published column). */
export interface ChatMessage {
  id: string;
  chat_id: string;
  seq: number;
  sender_id: string | null;
  client_generated_id: string | null;
  content: string;
  status?: MessageStatus | string | null;
  created_at?: string;
  [column: string]: unknown;
}

/** A message's delivery status as stored by the relay. */
export type MessageStatus = "sent" | "delivered" | "read";

/** A message this client sent that the relay has not stored yet. */
export interface PendingMessage {
  chat_id: string;
  client_generated_id: string;
  content: string;
  sender_id: string | null;
  /** When `send` was called (ms since the epoch). */
  created_at: number;
  /** Always "pending" until the echo replaces it; "failed" when refused for good. */
  status: "pending" | "failed";
}

/** An outbox entry, as stored by an {@link OutboxStorage}. */
export interface OutboxEntry {
  chat_id: string;
  client_generated_id: string;
  content: string;
  sender_id: string | null;
  created_at: number;
  /** Order of `send` calls, across chats (storage returns entries sorted by it). */
  order: number;
}

/** A participant's watermarks. */
export interface Receipt {
  chat_id: string;
  user_id: string;
  delivered_seq: number;
  read_seq: number;
}

/** What `subscribed` resolves with. */
export interface Subscription {
  chatId: string;
  /** The chat's highest seq when the (latest) subscription began. */
  latestSeq: number;
  /** Users online in the chat (the server caps the list; see `onlineTruncated`). */
  online: string[];
  onlineTruncated: boolean;
}

/** One page of `history`. */
export interface HistoryPage {
  messages: ChatMessage[];
  /** Older messages exist (ask again with `beforeSeq` = the first message's seq). */
  hasMore: boolean;
}

/** Connection states, in the order a healthy connection goes through them. */
export type ConnectionState = "idle" | "connecting" | "open" | "offline" | "closed";

/** Status change of a message this client or someone else sent. */
export interface StatusChange {
  chatId: string;
  clientGeneratedId: string | null;
  id: string | null;
  seq: number | null;
  status: "pending" | "sent" | "delivered" | "read" | "failed";
}
