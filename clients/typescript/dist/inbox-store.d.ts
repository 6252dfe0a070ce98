/**
 * The conversation list as a store (protocol 1.2 `inbox`): summaries sorted
 * by `last_activity` (newest first), then `chat_id`; the badge
 * (`unread_chats`); older pages with `loadMore()`; live `chat` and
 * `chat_removed` frames merged in; the first page fetched again after every
 * reconnect (the relay's pages are the truth).
 */
import type { ChatRelayClient } from "./client.js";
import type { ChatRelayError } from "./errors.js";
import { BaseStore } from "./store.js";
import type { ChatSummary } from "./types.js";
export interface InboxSnapshot {
    chats: readonly ChatSummary[];
    /** Chats with unread messages, over all pages: the app badge. */
    unreadChats: number;
    /** Older pages exist: `loadMore()`. */
    hasMore: boolean;
    loading: boolean;
    error: ChatRelayError | null;
}
export declare class InboxStore extends BaseStore<InboxSnapshot> {
    #private;
    private readonly client;
    private readonly pageSize;
    constructor(client: ChatRelayClient, pageSize?: number);
    /** Fetches the next older page. */
    loadMore(): Promise<void>;
    protected start(): void;
    protected stop(): void;
}
