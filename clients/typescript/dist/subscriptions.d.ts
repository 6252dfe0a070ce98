/**
 * Subscriptions, one per chat: the cursor and the dedupe of what was handed
 * to the app, the `subscribe` + `ping` barrier that says the backfill has
 * arrived, resubscribes after reconnects, who is online, acks and reads.
 */
import { type BackoffOptions } from "./backoff.js";
import { ChatRelayError } from "./errors.js";
import type { ChatMessage, Subscription } from "./types.js";
import type { Frame, Timer } from "./util.js";
export interface ChatState {
    wanted: boolean;
    cursor: number | null;
    ready: boolean;
    latestSeq: number;
    online: Set<string>;
    onlineTruncated: boolean;
    seenIds: Set<string>;
    seenCgids: Set<string>;
    seenOrder: Array<[string, string | null]>;
    waiters: Array<{
        resolve: (s: Subscription) => void;
        reject: (e: ChatRelayError) => void;
    }>;
    ackSeq: number;
    ackedSeq: number;
    ackTimer: Timer | null;
    readSeq: number;
    readSent: number;
    lastTypingAt: number;
    retryTimer: Timer | null;
    /** Failed subscribes in a row (the retry backoff). */
    retries: number;
}
/** What the subscriptions ask of the client. */
export interface SubscriptionHooks {
    write(frame: Frame): boolean;
    isOpen(): boolean;
    ref(): string;
    subscribed(sub: Subscription): void;
    error(e: ChatRelayError): void;
}
export declare class Subscriptions {
    #private;
    private readonly o;
    private readonly h;
    readonly chats: Map<string, ChatState>;
    constructor(o: {
        backoff: BackoffOptions;
        ackDelayMs: number;
        requestTimeoutMs: number;
    }, h: SubscriptionHooks);
    chat(chatId: string): ChatState;
    /** Resolves once live (the backfill delivered); rejects after `requestTimeoutMs`, though the subscription keeps trying. */
    subscribe(chatId: string, afterSeq: number | undefined): Promise<Subscription>;
    /** Stops a chat (keeping its cursor); false when it was not subscribed. */
    unsubscribe(chatId: string, err: ChatRelayError): boolean;
    /** The connection is open: resubscribe, resend reads, acks. */
    opened(): void;
    /** The connection is gone: every subscription must be asked for again. */
    disconnected(): void;
    /** Every waiting `subscribe()` fails with `err` (the subscriptions stay wanted). */
    failWaiters(err: ChatRelayError): void;
    close(err: ChatRelayError): void;
    /** Whether a row is new for the app (above the cursor, never seen); if so, the cursor moves to it. */
    accept(chatId: string, m: ChatMessage): boolean;
    onSubscribed(chatId: string, f: Frame, ref: string | null): void;
    /** A pong: the chats whose barrier it was are live. */
    onPong(ref: string | null): void;
    /** An `error` answering a `subscribe`; false if `ref` was none. */
    onError(ref: string, err: ChatRelayError): boolean;
    /** The relay could not keep a subscription: ask again. */
    lost(chatId: string): void;
    /** The relay ended a subscription (removal). */
    removed(chatId: string): void;
    presence(chatId: string, userId: string, online: boolean): void;
    subscription(chatId: string, chat: ChatState): Subscription;
    ack(chatId: string, seq: number): void;
    markRead(chatId: string, seq: number): void;
}
