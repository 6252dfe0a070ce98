/** Reconnect delays: exponential with full jitter (AWS architecture blog's "full jitter"). */
export const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 };
/** Delay before reconnect attempt `attempt` (0-based): uniform in [ceiling/2, ceiling]. */
export function backoffDelay(attempt, opts = DEFAULT_BACKOFF, random = Math.random) {
    const ceiling = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.min(attempt, 30));
    // Half fixed, half random: never a hot loop, and a crowd spreads out.
    return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
