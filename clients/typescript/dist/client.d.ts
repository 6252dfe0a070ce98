/**
 * The chat-relay client: one WebSocket, any number of chats.
 *
 * What it keeps so an app does not have to:
 * - a cursor per chat (the highest `seq` handed to the app); every
 *   (re)subscribe asks for `after_seq` = cursor, and anything at or below it,
 *   or with an `id` / `client_generated_id` already seen, is dropped;
 * - `subscribed` only once the backfill has arrived (a `ping` sent right
 *   after `subscribe` is answered after everything the subscribe owes);
 * - an outbox: `send` returns at once with a `client_generated_id`; the
 *   message is retried with that id until the relay answers `sent`, one at a
 *   time per chat (so in order), across reconnects and, with a persistent
 *   {@link OutboxStorage}, reloads;
 * - reconnects with jittered exponential backoff, at once when the browser
 *   goes online or the page becomes visible; a socket that answers nothing
 *   to a `ping` is treated as dead;
 * - tokens from `getToken`, one request at a time, refreshed before expiry
 *   with `auth` (no resubscribe);
 * - debounced `ack`s, `markRead`, and status / receipt events.
 *
 * The parts, one module each: {@link Connection} (the socket and its state
 * machine), {@link Tokens}, {@link Outbox}, {@link Subscriptions}; this class
 * wires them together and says what each server frame means.
 */
import { type BackoffOptions } from "./backoff.js";
import { type WebSocketConstructor } from "./connection.js";
import { Emitter } from "./emitter.js";
import { ChatRelayError } from "./errors.js";
import { ChatStore, type ChatStoreOptions } from "./chat-store.js";
import { InboxStore } from "./inbox-store.js";
import { type Locks, type SendResult } from "./outbox.js";
import { type OutboxStorage } from "./storage.js";
import type { ChatMessage, ChatSummary, ConnectionSnapshot, ConnectionState, Environment, HistoryPage, InboxPage, Logger, PendingMessage, Receipt, StateChange, StatusChange, Subscription } from "./types.js";
export type { WebSocketConstructor, WebSocketLike } from "./connection.js";
export interface ClientOptions {
    /** `ws(s)://host/v1/ws` */
    url: string;
    /** Returns a fresh access token (JWT). Called to connect and before the current one expires; never twice at once. */
    getToken: () => string | Promise<string>;
    /** Where `globalThis.WebSocket` is missing (Node 20): `import WebSocket from "ws"`. */
    WebSocket?: WebSocketConstructor;
    /** Keeps unsent messages; default {@link MemoryStorage}. In browsers use {@link IndexedDbStorage} to survive reloads. */
    storage?: OutboxStorage;
    /** Reconnect delays (default 0.5 s doubling to 30 s, jittered). */
    backoff?: BackoffOptions;
    /** How often to ping an idle connection (default 20 s). */
    pingIntervalMs?: number;
    /** No frame at all this long after a ping: the socket is dead (default 10 s). */
    pingTimeoutMs?: number;
    /** Acks for received messages are sent at most this often per chat (default 250 ms). */
    ackDelayMs?: number;
    /** Ack other people's messages as they arrive (default true): their status goes to "delivered". */
    autoAck?: boolean;
    /** Refresh the token this long before it expires (default 60 s, at most a quarter of its lifetime). */
    refreshBeforeMs?: number;
    /** Listen to `online` and `visibilitychange` (default: when running in a browser). */
    watchEnvironment?: boolean;
    /** Give up on a request (history, subscribe) after this long without an answer (default 30 s). */
    requestTimeoutMs?: number;
    /** Give up on a socket that has not opened this long after dialing, and dial again (default 15 s). */
    connectTimeoutMs?: number;
    /** Send a message again (same id) when its `send` had no answer this long (default 15 s). */
    sendTimeoutMs?: number;
    /** The relay's frame limit, `CHAT_RELAY_MAX_FRAME_BYTES` (default 65536): larger messages fail at once, as `too_large`. */
    maxFrameBytes?: number;
    /** Network and foreground hints where there is no `window` (React Native); replaces `watchEnvironment`. */
    environment?: Environment;
    /** Where the client says what it does and what went wrong (default: console, errors only). */
    logger?: Logger;
    /** Web Locks (default `navigator.locks`): with a storage tabs share, one tab at a time sends what was stored. */
    locks?: Locks;
}
/** A `send` in progress. */
export interface OutgoingMessage extends PendingMessage {
    /** Resolves with the stored row's id and seq (once `sent` arrives); rejects with a non-retryable {@link ChatRelayError}. */
    done: Promise<SendResult>;
}
export interface MessageMeta {
    /** The `client_generated_id` of the optimistic message this row replaces, if this client sent it. */
    replaces: string | null;
}
/** Events and their arguments. */
export interface ClientEvents {
    /** A new message, in seq order, exactly once. */
    message: [message: ChatMessage, meta: MessageMeta];
    /** A message changed (content edit, status). */
    update: [message: ChatMessage];
    delete: [event: {
        chatId: string;
        seq: number;
        id: string;
    }];
    receipt: [receipt: Receipt];
    /** A message's status moved: pending → sent → delivered → read, or failed. */
    status: [change: StatusChange];
    /** A subscription is live: its backfill has arrived. After every (re)connect. */
    subscribed: [subscription: Subscription];
    /** The relay ended a subscription (`reason` "forbidden": the user was removed). */
    unsubscribed: [event: {
        chatId: string;
        reason: string | null;
    }];
    typing: [event: {
        chatId: string;
        userId: string;
    }];
    presence: [event: {
        chatId: string;
        userId: string;
        online: boolean;
    }];
    /** The connection's state moved; `why` carries the close code and reason, or the client's own. */
    state: [state: ConnectionState, why: StateChange];
    error: [error: ChatRelayError];
    /** A chat's summary changed (protocol 1.2; while an inbox is on: `client.inbox()`). */
    chat: [summary: ChatSummary];
    /** The user left a chat (protocol 1.2 `chat_removed`). */
    chatRemoved: [event: {
        chatId: string;
    }];
}
export declare class ChatRelayClient extends Emitter<ClientEvents> {
    #private;
    constructor(options: ClientOptions);
    /** The current connection state. */
    get connectionState(): ConnectionState;
    /** The signed-in user (the token's `sub`), once a token was fetched. */
    get userId(): string | null;
    /** The signed-in user: the token's `sub`, fetching a token if there is none yet; null when `getToken` fails. */
    user(): Promise<string | null>;
    /**
     * One conversation as a store (`getSnapshot`/`subscribe`, for
     * useSyncExternalStore): the same store for a chat id every time. It
     * subscribes to the chat while it has listeners.
     */
    chat(chatId: string, opts?: ChatStoreOptions): ChatStore;
    /** The conversation list as a store (protocol 1.2); the inbox is on while it has listeners. */
    inbox(): InboxStore;
    /** The connection's state, why it is in it, and who: one frozen object per change (for useSyncExternalStore with the `state` event). */
    get connection(): ConnectionSnapshot;
    /** One page of the inbox (protocol 1.2): the first, or the one after `before` (an earlier page's `next`). Turns the inbox on. */
    inboxPage(opts?: {
        before?: string;
    }, limit?: number): Promise<InboxPage>;
    /** Turns the connection's inbox off (no more `chat` events). */
    inboxOff(): void;
    /** Opens the connection (subscribe and send do too). */
    connect(): void;
    /**
     * Subscribes to a chat; resolves once the backfill after `afterSeq` (or
     * the client's own cursor) has been delivered as `message` events.
     * Without either, starts after the chat's latest message.
     */
    subscribe(chatId: string, opts?: {
        afterSeq?: number;
    }): Promise<Subscription>;
    /** Stops a chat's events (its cursor is kept for a later subscribe). */
    unsubscribe(chatId: string): void;
    /** The highest seq delivered for a chat, or null. */
    cursor(chatId: string): number | null;
    /** Users online in a chat (from `subscribed` and `presence`). */
    online(chatId: string): string[];
    /**
     * Sends a message. Returns at once with the optimistic message; the relay's
     * row arrives later as a `message` event whose `meta.replaces` names it.
     */
    send(chatId: string, content: string): OutgoingMessage;
    /** The signed-in user's messages not stored yet, oldest first, failed ones included (to render after a reload). */
    pendingMessages(chatId?: string): PendingMessage[];
    /** Sends a failed message again; its new `done`, or null if no such failed message. */
    retry(clientGeneratedId: string): Promise<SendResult> | null;
    /** Sends a failed message again (same id), with new `content` if given; its new `done`, or null. */
    edit(clientGeneratedId: string, content?: string): Promise<SendResult> | null;
    /** Forgets a failed (or not yet sent) message, in storage too; false when there is none such or it is in flight. */
    discard(clientGeneratedId: string): Promise<boolean>;
    /** Resolves when every message in the outbox has been stored (or failed). */
    flushed(): Promise<void>;
    /** The user has read a chat up to `seq`. */
    markRead(chatId: string, seq: number): void;
    /** A page of older messages: the `limit` newest before `beforeSeq` (or the newest). */
    history(chatId: string, opts?: {
        beforeSeq?: number;
        limit?: number;
    }): Promise<HistoryPage>;
    /** The user is typing in a chat: sent at most every 2 s, only while subscribed. */
    typing(chatId: string): void;
    /**
     * Goes offline on purpose (false): the socket closes and nothing reconnects;
     * sends queue in the outbox. Back online (true): reconnects at once.
     */
    setOnline(online: boolean): void;
    /** Closes for good: no reconnects; pending requests fail with `closed`. */
    close(): void;
}
