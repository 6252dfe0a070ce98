/**
 * Tokens from the app's `getToken`: one call at a time, cached until they
 * near expiry; the claims say who the user is (`sub`) and when to refresh.
 */
import { ChatRelayError } from "./errors.js";
import { decodeClaims } from "./util.js";
export class Tokens {
    fetch;
    refreshBeforeMs;
    token = null;
    /** The token's `exp`, in ms, when it has one. */
    exp = null;
    /** The signed-in user: the latest token's `sub`. */
    sub = null;
    /** The next connect fetches a new token (the last one was, or may have been, refused). */
    force = false;
    #issued = 0;
    #flight = null;
    constructor(fetch, refreshBeforeMs) {
        this.fetch = fetch;
        this.refreshBeforeMs = refreshBeforeMs;
    }
    /** The cached token, or a fresh one when `force`, missing or expiring; never two calls at once. */
    get(force) {
        if (this.#flight)
            return this.#flight;
        if (!force && this.token && !this.expiring())
            return Promise.resolve(this.token);
        this.#flight = (async () => {
            try {
                const token = await this.fetch();
                if (typeof token !== "string" || token.length === 0)
                    throw new Error("getToken returned no token");
                if (token === this.token)
                    return token; // the app's cache: nothing new
                this.token = token;
                this.#issued = Date.now();
                const claims = decodeClaims(token);
                this.exp = typeof claims?.exp === "number" ? claims.exp * 1000 : null;
                if (typeof claims?.sub === "string")
                    this.sub = claims.sub;
                return token;
            }
            catch (e) {
                if (e instanceof ChatRelayError && e.code === "unauthorized")
                    throw e;
                throw new ChatRelayError("token", `getToken failed: ${e instanceof Error ? e.message : String(e)}`);
            }
            finally {
                this.#flight = null;
            }
        })();
        return this.#flight;
    }
    /** How long before expiry to refresh: `refreshBeforeMs`, at most a quarter of the lifetime. */
    #margin() {
        const lifetime = this.exp === null ? Infinity : this.exp - this.#issued;
        return Math.min(this.refreshBeforeMs, lifetime / 4);
    }
    expiring() {
        return this.exp !== null && Date.now() >= this.exp - this.#margin();
    }
    /** Milliseconds until the refresh is due, or null for a token without `exp`. */
    refreshIn() {
        return this.exp === null ? null : Math.max(0, this.exp - this.#margin() - Date.now());
    }
    /** How long to wait before asking again when `getToken` gave the same token back: a quarter of the margin, at least `floor`. */
    patience(floor) {
        return Math.max(floor, this.#margin() / 4);
    }
}
