/**
 * The socket: dialing with a token, reconnecting with backoff, pings that
 * find a dead socket, the browser's online/visibility hints, and the
 * connection's state machine. It knows frames only as JSON objects; what
 * they mean is the client's business.
 */
import { backoffDelay } from "./backoff.js";
import { ChatRelayError } from "./errors.js";
const OPEN = 1;
export class Connection {
    o;
    h;
    state = "idle";
    /** Closed for good (`close()`). */
    closed = false;
    /** Offline on purpose (`setOnline(false)`). */
    manualOffline = false;
    #ws = null;
    #attempt = 0;
    #refs = 0;
    #reconnectTimer = null;
    #pingTimer = null;
    #deadTimer = null;
    #lastFrameAt = 0;
    constructor(o, h) {
        this.o = o;
        this.h = h;
    }
    get isOpen() {
        return this.#ws !== null && this.#ws.readyState === OPEN;
    }
    /** Opens the connection unless it is open, opening, closed or offline on purpose (`unauthorized`: tries again). */
    connect() {
        if (this.closed || this.manualOffline)
            return;
        if (this.state === "idle" || this.state === "unauthorized")
            void this.#open();
    }
    /** A fresh request reference (`ref`). */
    ref() {
        this.#refs += 1;
        return `c${this.#refs}`;
    }
    /** Writes a frame if the socket is open; false when it is not. */
    write(frame) {
        if (!this.#ws || this.#ws.readyState !== OPEN)
            return false;
        try {
            this.#ws.send(JSON.stringify(frame));
            return true;
        }
        catch {
            return false;
        }
    }
    setOnline(online) {
        if (this.closed)
            return;
        if (!online) {
            this.manualOffline = true;
            this.#clearReconnect();
            this.drop(1000, "offline");
            this.#setState("offline", 1000, "offline");
        }
        else if (this.manualOffline) {
            this.manualOffline = false;
            this.#setState("idle", 0, "online");
            this.#attempt = 0;
            void this.#open();
        }
    }
    close() {
        this.closed = true;
        this.#clearReconnect();
        this.drop(1000, "client closed");
        this.#setState("closed", 1000, "client closed");
    }
    async #open() {
        if (this.closed || this.manualOffline || this.#ws)
            return;
        this.#setState("connecting", 0, "connect");
        let token;
        try {
            token = await this.h.token();
        }
        catch (e) {
            const err = e instanceof ChatRelayError ? e : new ChatRelayError("token", `getToken failed: ${String(e)}`);
            this.h.error(err);
            if (err.code === "unauthorized")
                this.unauthorized(err.message);
            else
                this.#scheduleReconnect();
            return;
        }
        if (this.closed || this.manualOffline || this.#ws)
            return;
        const sep = this.o.url.includes("?") ? "&" : "?";
        let ws;
        try {
            ws = new this.o.WebSocket(`${this.o.url}${sep}access_token=${encodeURIComponent(token)}`);
        }
        catch (e) {
            this.h.error(new ChatRelayError("unavailable", `cannot open the socket: ${String(e)}`));
            this.#scheduleReconnect();
            return;
        }
        this.#ws = ws;
        let opened = false;
        const stuck = setTimeout(() => {
            if (this.#ws === ws && !opened)
                this.drop(4000, "connect timeout", false);
        }, this.o.connectTimeoutMs);
        ws.onopen = () => {
            clearTimeout(stuck);
            if (this.#ws !== ws)
                return;
            opened = true;
            this.#attempt = 0;
            this.#lastFrameAt = Date.now();
            this.#setState("open", 0, "open");
            this.h.open();
            this.#startPings();
        };
        ws.onmessage = (ev) => {
            if (this.#ws !== ws)
                return;
            this.#lastFrameAt = Date.now();
            if (typeof ev.data !== "string")
                return;
            let frame;
            try {
                frame = JSON.parse(ev.data);
            }
            catch {
                return;
            }
            this.h.frame(frame);
        };
        ws.onclose = (ev) => {
            clearTimeout(stuck);
            if (this.#ws !== ws)
                return;
            this.#onClosed(ev.code, ev.reason ?? "", opened);
        };
        ws.onerror = () => {
            // A close event follows.
        };
    }
    #onClosed(code, reason, opened) {
        this.#ws = null;
        this.#stopPings();
        this.h.closed(code, opened, this.#attempt);
        if (this.closed || this.state === "unauthorized")
            return;
        if (this.manualOffline) {
            this.#setState("offline", 1000, "offline");
            return;
        }
        this.#setState("connecting", code, reason);
        this.#scheduleReconnect(code === 4008 || code === 1001 ? Math.min(this.#attempt, 1) : undefined);
    }
    /** `getToken` says nobody is signed in: stop until `connect()`. */
    unauthorized(reason) {
        this.#clearReconnect();
        this.#setState("unauthorized", 4001, reason);
        this.drop(4001, reason);
    }
    #scheduleReconnect(attempt) {
        if (this.closed || this.manualOffline)
            return;
        this.#clearReconnect();
        const delay = backoffDelay(attempt ?? this.#attempt, this.o.backoff);
        this.#attempt += 1;
        this.#setState("connecting", 0, "reconnect");
        this.#reconnectTimer = setTimeout(() => {
            this.#reconnectTimer = null;
            void this.#open();
        }, delay);
    }
    /** Reconnect now (network back, page visible) instead of waiting for the backoff. */
    reconnectNow() {
        if (this.closed || this.manualOffline)
            return;
        if (this.#ws) {
            // Maybe a dead socket: a ping tells within pingTimeoutMs.
            this.#ping();
            return;
        }
        this.#clearReconnect();
        this.#attempt = 0;
        void this.#open();
    }
    #clearReconnect() {
        if (this.#reconnectTimer)
            clearTimeout(this.#reconnectTimer);
        this.#reconnectTimer = null;
    }
    /** Closes the socket at once (as closed with `code`), without waiting for its close event. */
    drop(code, reason, opened = true) {
        const ws = this.#ws;
        if (!ws)
            return;
        this.#onClosed(code, reason, opened);
        try {
            ws.close(code, reason);
        }
        catch {
            // already closing
        }
    }
    #startPings() {
        this.#stopPings();
        this.#pingTimer = setInterval(() => this.#ping(), this.o.pingIntervalMs);
    }
    #stopPings() {
        if (this.#pingTimer)
            clearInterval(this.#pingTimer);
        if (this.#deadTimer)
            clearTimeout(this.#deadTimer);
        this.#pingTimer = null;
        this.#deadTimer = null;
    }
    /** Pings; a socket that sends no frame at all within the timeout is dead. */
    #ping() {
        if (!this.isOpen || this.#deadTimer)
            return;
        const sentAt = Date.now();
        this.write({ type: "ping", ref: this.ref() });
        this.#deadTimer = setTimeout(() => {
            this.#deadTimer = null;
            if (this.#lastFrameAt < sentAt)
                this.drop(4000, "no answer to ping");
        }, this.o.pingTimeoutMs);
    }
    /** Listens to the app's network and foreground hints; returns the function that stops listening. */
    watch(env) {
        const now = () => this.reconnectNow();
        const offs = [env.onOnline?.(now), env.onForeground?.(now)];
        return () => offs.forEach((off) => off?.());
    }
    /** Listens to `online` and `visibilitychange`; returns the function that stops listening. */
    watchBrowser() {
        const doc = globalThis.document;
        const on = (target, type, fn) => {
            target?.addEventListener?.(type, fn);
            return () => target?.removeEventListener?.(type, fn);
        };
        return this.watch({
            onOnline: (fn) => on(globalThis, "online", fn),
            onForeground: (fn) => on(doc, "visibilitychange", () => doc?.visibilityState === "visible" && fn()),
        });
    }
    #setState(state, code, reason) {
        if (this.state === state)
            return;
        this.state = state;
        this.h.state(state, { code, reason });
    }
}
