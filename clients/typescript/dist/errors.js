/** Errors the client surfaces, as typed values. */
const RETRYABLE = new Set([
    "rate_limited",
    "internal",
    "unavailable",
    "disconnected",
    "timeout",
    "token",
]);
export class ChatRelayError extends Error {
    name = "ChatRelayError";
    /** The protocol's error code, or the client's own. */
    code;
    /** The chat it concerns, when the relay named one. */
    chatId;
    /** For `rate_limited`: how long to wait before trying again. */
    retryAfterMs;
    constructor(code, message, opts = {}) {
        super(message);
        this.code = code;
        this.chatId = opts.chatId;
        this.retryAfterMs = opts.retryAfterMs;
    }
    /** Whether the same request may succeed later (the client retries these itself where it owns the request). */
    get retryable() {
        return RETRYABLE.has(this.code);
    }
    /** From a server `error` frame. */
    static fromFrame(frame) {
        const code = typeof frame.code === "string" ? frame.code : "internal";
        const message = typeof frame.message === "string" ? frame.message : code;
        const opts = {};
        if (typeof frame.chat_id === "string")
            opts.chatId = frame.chat_id;
        if (typeof frame.retry_after_ms === "number")
            opts.retryAfterMs = frame.retry_after_ms;
        return new ChatRelayError(code, message, opts);
    }
}
/**
 * Throw this from `getToken` when there is no signed-in user: the client
 * stops retrying and goes to state `unauthorized` until `connect()`.
 */
export class UnauthorizedError extends ChatRelayError {
    constructor(message = "not signed in") {
        super("unauthorized", message);
    }
}
