/**
 * The outbox: messages sent but not stored yet. Kept in an
 * {@link OutboxStorage} until the relay answers `sent`, sent one at a time
 * per chat (so in order), retried with the same `client_generated_id`.
 *
 * Per user: an entry goes out only on a connection of the user who wrote it
 * (the token's `sub`). Across tabs sharing a storage (IndexedDB), one tab at
 * a time, the holder of a Web Lock named by the storage, sends what was
 * stored before it started; each tab sends what it writes itself. Without
 * Web Locks every tab sends everything (the relay stores each id once). An entry the relay refuses for good (or one too large
 * to send) is marked failed and kept, never retried on its own: the app
 * calls `retry`, `edit` or `discard`.
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
    /** A send went unanswered: the socket may be dead. */
    stalled(): void;
}
export interface OutboxOptions {
    backoff: BackoffOptions;
    /** The relay's frame limit (`CHAT_RELAY_MAX_FRAME_BYTES`). */
    maxFrameBytes: number;
    sendTimeoutMs: number;
    /** `navigator.locks`, or a stand-in. */
    locks?: Locks | undefined;
}
/** The part of the Web Locks API the outbox uses. */
export interface Locks {
    request(name: string, callback: () => Promise<void>): Promise<unknown>;
}
export declare class Outbox {
    #private;
    private readonly storage;
    private readonly o;
    private readonly h;
    /** Settles once the stored entries are in. */
    readonly loaded: Promise<void>;
    constructor(storage: OutboxStorage, o: OutboxOptions, h: OutboxHooks);
    /** Queues a message; returns its entry and `done`. */
    add(chatId: string, content: string, cgid: string): {
        entry: OutboxEntry;
        done: Promise<SendResult>;
    };
    /** The current user's entries (of one chat), oldest first, failed ones included. */
    pending(chatId?: string): PendingMessage[];
    view(entry: OutboxEntry): PendingMessage;
    /** Resolves when every entry of the current user is stored or failed. */
    flushed(): Promise<void>;
    /** Sends a failed entry again (as it is); its new `done`, or null if there is no such failed entry. */
    retry(cgid: string, content?: string): Promise<SendResult> | null;
    /** Forgets an entry that is failed or not in flight (in storage too); false if there is none such. */
    discard(cgid: string): Promise<boolean>;
    /** The socket is gone: nothing is in flight any more. `code` 1009: the largest send in flight was too large. */
    disconnected(code: number): void;
    /** The client closed: every `done` still open is rejected (entries stay stored for the next client). */
    close(): void;
    /** Sends the oldest unsent message of each chat that has none in flight. */
    flush(): void;
    onSent(f: Frame, ref: string | null): void;
    /** An entry is stored (its `sent`, or its row arrived): forget it, tell the app. False if unknown. */
    settle(cgid: string, result: SendResult): boolean;
    /** An `error` answering a `send`: retry later, or fail the message for good. False if `ref` was no send. */
    onError(ref: string, err: ChatRelayError): boolean;
}
