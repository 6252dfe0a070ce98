/** Wire types of the chat-relay protocol (1.2) and the client's own. */
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
    /** "pending" until the echo replaces it; "failed" when refused for good (see `retry`, `edit`, `discard`). */
    status: "pending" | "failed";
    /** Why it failed (an {@link ErrorCode}). */
    error?: string;
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
    /** Set when the relay refused it for good: kept, never sent again on its own. */
    status?: "failed";
    /** The error code it failed with. */
    error?: string;
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
export type ConnectionState = "idle" | "connecting" | "open" | "offline" | "unauthorized" | "closed";
/**
 * Why the state changed: a WebSocket close code and reason where a socket
 * closed (the relay's 4001, 4008, 1009, ...), else the client's own: 0
 * "connect", 0 "open", 1000 "offline", 1000 "client closed", 4000 "connect
 * timeout", 4000 "no answer to ping", 4001 for `unauthorized`, 4002 "user
 * changed".
 */
export interface StateChange {
    code: number;
    reason: string;
}
/** Where a logger is passed, the client says what it does (debug) and what went wrong (warn, error). */
export interface Logger {
    debug?(...args: unknown[]): void;
    warn?(...args: unknown[]): void;
    error?(...args: unknown[]): void;
}
/** Network and app-state hints (React Native: NetInfo, AppState); each returns its unsubscribe. */
export interface Environment {
    /** Calls `fn` when the network comes back. */
    onOnline?(fn: () => void): () => void;
    /** Calls `fn` when the app comes to the foreground (a page becomes visible). */
    onForeground?(fn: () => void): () => void;
}
/** Status change of a message this client or someone else sent. */
export interface StatusChange {
    chatId: string;
    clientGeneratedId: string | null;
    id: string | null;
    seq: number | null;
    status: "pending" | "sent" | "delivered" | "read" | "failed";
}
/** What a conversation list shows for one chat (protocol 1.2 `inbox` and `chat`). */
export interface ChatSummary {
    chat_id: string;
    /** The chat's highest seq (0 when empty). */
    last_seq: number;
    last_message: ChatMessage | null;
    /** RFC 3339: the newest message's `created_at`, or the chat's. */
    last_activity: string;
    /** Unread messages (others'), at most 999. */
    unread: number;
    read_seq: number;
    delivered_seq: number;
    /** On `chat` frames: the badge after this change. */
    unread_chats?: number;
}
/** One page of the inbox. */
export interface InboxPage {
    chats: ChatSummary[];
    /** Cursor of the next older page, or null. */
    next: string | null;
    /** Chats with unread messages, over all pages. */
    unreadChats: number;
}
/** The connection, as `client.connection()` shows it. */
export interface ConnectionSnapshot extends StateChange {
    state: ConnectionState;
    /** The token's `sub`, once known. */
    userId: string | null;
}
