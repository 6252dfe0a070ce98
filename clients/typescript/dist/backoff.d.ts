/** Reconnect delays: exponential with full jitter (AWS architecture blog's "full jitter"). */
export interface BackoffOptions {
    /** First delay's ceiling, ms. */
    initialMs: number;
    /** Largest ceiling, ms. */
    maxMs: number;
}
export declare const DEFAULT_BACKOFF: BackoffOptions;
/** Delay before reconnect attempt `attempt` (0-based): uniform in [ceiling/2, ceiling]. */
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;
