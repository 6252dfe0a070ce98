/** Small helpers with no state: JWT claims, ids, a deferred promise. */
/** The JWT's claims, without verifying it (the relay does that). */
export declare function decodeClaims(token: string): {
    exp?: unknown;
    sub?: unknown;
} | null;
/** A v4 UUID (crypto.randomUUID where there is one; else random bytes, or Math.random in React Native). */
export declare function uuid(): string;
export type Timer = ReturnType<typeof setTimeout>;
/** A wire frame: one JSON object with a `type`. */
export type Frame = Record<string, unknown>;
