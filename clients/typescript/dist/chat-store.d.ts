/**
 * One conversation as a store: a window of stored messages in `seq` order
 * (history, then live), the user's own unsent and failed messages after
 * them, ticks, who is typing, who is online, and read marking while the app
 * says the chat is visible. The window and its cursor are saved through the
 * storage adapter, so a cold start renders at once and resumes with
 * `after_seq`.
 */
import type { ChatRelayClient } from "./client.js";
import type { ChatRelayError } from "./errors.js";
import type { SendResult } from "./outbox.js";
import type { OutboxStorage } from "./storage.js";
import { BaseStore } from "./store.js";
import type { ChatMessage } from "./types.js";
/** One line of the conversation: a stored message, or one of the user's not stored yet. */
export interface ChatItem {
    /** Stable across the swap from pending to stored: the `client_generated_id` when there is one, else the id. */
    key: string;
    id: string | null;
    seq: number | null;
    sender_id: string | null;
    client_generated_id: string | null;
    content: string;
    /** RFC 3339 for stored messages, ms since the epoch for pending ones. */
    created_at: string | number | null;
    status: "pending" | "failed" | "sent" | "delivered" | "read";
    mine: boolean;
    /** Why it failed. */
    error?: string;
    /** The stored row, every column. */
    row?: ChatMessage;
}
export interface ChatSnapshot {
    chatId: string;
    /** Oldest first: the stored window, then pending and failed messages. */
    items: readonly ChatItem[];
    /** Older messages exist: `loadOlder()`. */
    hasMore: boolean;
    /** A page of history is on its way. */
    loading: boolean;
    /** Subscribed, backfill in: what shows is current. */
    live: boolean;
    /** The last thing that went wrong (a failed history page, a refused subscribe); cleared by success. */
    error: ChatRelayError | null;
    /** Who is typing now (others only; each for a few seconds). */
    typing: readonly string[];
    online: readonly string[];
}
/** What a chat keeps in storage. */
export interface SavedChat {
    messages: ChatMessage[];
    hasMore: boolean;
}
export interface ChatStoreOptions {
    /** Messages per history page (default 30). */
    pageSize?: number;
    /** Messages kept in storage for a cold start (default 50). */
    saveLast?: number;
    /** How long a `typing` shows (default 4 s). */
    typingMs?: number;
}
export declare class ChatStore extends BaseStore<ChatSnapshot> {
    #private;
    private readonly client;
    readonly chatId: string;
    private readonly storage;
    constructor(client: ChatRelayClient, chatId: string, storage: OutboxStorage, opts?: ChatStoreOptions);
    /** Sends a message to this chat (see `ChatRelayClient.send`). */
    send(content: string): Promise<SendResult>;
    /** The user is typing (throttled by the client). */
    typing(): void;
    retry(clientGeneratedId: string): void;
    edit(clientGeneratedId: string, content: string): void;
    discard(clientGeneratedId: string): Promise<boolean>;
    /** Whether the user can see the chat now; while visible, what arrives is marked read. */
    setVisible(visible: boolean): void;
    /** Fetches the page before the oldest message in the window. */
    loadOlder(): Promise<void>;
    protected start(): void;
    protected stop(): void;
}
