export declare class Tokens {
    #private;
    private readonly fetch;
    private readonly refreshBeforeMs;
    token: string | null;
    /** The token's `exp`, in ms, when it has one. */
    exp: number | null;
    /** The signed-in user: the latest token's `sub`. */
    sub: string | null;
    /** The next connect fetches a new token (the last one was, or may have been, refused). */
    force: boolean;
    constructor(fetch: () => string | Promise<string>, refreshBeforeMs: number);
    /** The cached token, or a fresh one when `force`, missing or expiring; never two calls at once. */
    get(force: boolean): Promise<string>;
    expiring(): boolean;
    /** Milliseconds until the refresh is due, or null for a token without `exp`. */
    refreshIn(): number | null;
    /** How long to wait before asking again when `getToken` gave the same token back: a quarter of the margin, at least `floor`. */
    patience(floor: number): number;
}
