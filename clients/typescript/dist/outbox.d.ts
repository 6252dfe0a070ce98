/**
 * The outbox: messages sent but not stored yet. Kept in an
 * {@link OutboxStorage} until the relay answers `sent`, sent one at a time
 * per chat (so in order), retried with the same `client_generated_id`.
 */
import { type BackoffOptions } from "./backoff.js";
import { ChatRelayError } from "./errors.js";
import type { OutboxStorage } from "./storage.js";
import type { OutboxEntry, PendingMessage, StatusChange } from "./types.js";
import type { Frame } from "./util.js";
export interface SendResult {
    id: string;
    seq: number;
    duplicate: boolean;
}
/** What the outbox asks of the client. */
export interface OutboxHooks {
    /** Writes a frame when the socket is open (false: not written). */
    write(frame: Frame): boolean;
    isOpen(): boolean;
    ref(): string;
    me(): string | null;
    status(change: StatusChange): void;
    error(e: ChatRelayError): void;
}
export declare class Outbox {
    private readonly storage;
    private readonly backoff;
    private readonly h;
    private readonly items;
    private readonly inFlight;
    private order;
    private timer;
    /** Settles once the stored entries are in. */
    readonly loaded: Promise<void>;
    constructor(storage: OutboxStorage, backoff: BackoffOptions, h: OutboxHooks);
    /** Queues a message; returns its entry and `done`. */
    add(chatId: string, content: string, cgid: string): {
        entry: OutboxEntry;
        done: Promise<SendResult>;
    };
    has(cgid: string): boolean;
    pending(chatId?: string): PendingMessage[];
    view(entry: OutboxEntry): PendingMessage;
    flushed(): Promise<void>;
    /** The socket is gone: nothing is in flight any more. */
    disconnected(): void;
    stop(): void;
    /** Sends the oldest unsent message of each chat that has none in flight. */
    flush(): void;
    onSent(f: Frame, ref: string | null): void;
    /** An entry is stored (its `sent`, or its row arrived): forget it, tell the app. False if unknown. */
    settle(cgid: string, result: SendResult): boolean;
    /** An `error` answering a `send`: retry later, or fail the message for good. False if `ref` was no send. */
    onError(ref: string, err: ChatRelayError): boolean;
}
