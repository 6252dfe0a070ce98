/** Errors the client surfaces, as typed values. */
/** Codes of the protocol's `error` frames, plus the client's own. */
export type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "not_found" | "rate_limited" | "internal" | "unavailable"
/** The socket closed before the answer came (the request is retried where safe). */
 | "disconnected"
/** `close()` was called. */
 | "closed"
/** The relay took longer than the request's timeout. */
 | "timeout"
/** `getToken` threw or returned nothing usable. */
 | "token"
/** A message too large for the relay's frame limit (never sent, or the relay closed with 1009). */
 | "too_large";
export declare class ChatRelayError extends Error {
    readonly name = "ChatRelayError";
    /** The protocol's error code, or the client's own. */
    readonly code: ErrorCode;
    /** The chat it concerns, when the relay named one. */
    readonly chatId: string | undefined;
    /** For `rate_limited`: how long to wait before trying again. */
    readonly retryAfterMs: number | undefined;
    constructor(code: ErrorCode, message: string, opts?: {
        chatId?: string;
        retryAfterMs?: number;
    });
    /** Whether the same request may succeed later (the client retries these itself where it owns the request). */
    get retryable(): boolean;
    /** From a server `error` frame. */
    static fromFrame(frame: {
        code?: unknown;
        message?: unknown;
        chat_id?: unknown;
        retry_after_ms?: unknown;
    }): ChatRelayError;
}
/**
 * Throw this from `getToken` when there is no signed-in user: the client
 * stops retrying and goes to state `unauthorized` until `connect()`.
 */
export declare class UnauthorizedError extends ChatRelayError {
    constructor(message?: string);
}
