/**
 * The chat-relay client: one WebSocket, any number of chats.
 *
 * What it keeps so an app does not have to:
 * - a cursor per chat (the highest `seq` handed to the app); every
 *   (re)subscribe asks for `after_seq` = cursor, and anything at or below it,
 *   or with an `id` / `client_generated_id` already seen, is dropped;
 * - `subscribed` only once the backfill has arrived (a `ping` sent right
 *   after `subscribe` is answered after everything the subscribe owes);
 * - an outbox: `send` returns at once with a `client_generated_id`; the
 *   message is retried with that id until the relay answers `sent`, one at a
 *   time per chat (so in order), across reconnects and, with a persistent
 *   {@link OutboxStorage}, reloads;
 * - reconnects with jittered exponential backoff, at once when the browser
 *   goes online or the page becomes visible; a socket that answers nothing
 *   to a `ping` is treated as dead;
 * - tokens from `getToken`, one request at a time, refreshed before expiry
 *   with `auth` (no resubscribe);
 * - debounced `ack`s, `markRead`, and status / receipt events.
 *
 * The parts, one module each: {@link Connection} (the socket and its state
 * machine), {@link Tokens}, {@link Outbox}, {@link Subscriptions}; this class
 * wires them together and says what each server frame means.
 */
import { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
import { Connection } from "./connection.js";
import { Emitter } from "./emitter.js";
import { ChatRelayError } from "./errors.js";
import { ChatStore } from "./chat-store.js";
import { InboxStore } from "./inbox-store.js";
import { Outbox } from "./outbox.js";
import { MemoryStorage } from "./storage.js";
import { Subscriptions } from "./subscriptions.js";
import { Tokens } from "./token.js";
import { uuid } from "./util.js";
export class ChatRelayClient extends Emitter {
    #opts;
    #conn;
    #tokens;
    #outbox;
    #subs;
    #pending = new Map(); // ref -> request
    #storage;
    #stores = new Map();
    #inboxStore = null;
    #change;
    #refreshTimer = null;
    #refreshTries = 0;
    #unwatch = null;
    constructor(options) {
        super();
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS)
            throw new TypeError("no WebSocket here: pass one as options.WebSocket (e.g. `ws` under Node)");
        const inBrowser = typeof globalThis.document !== "undefined";
        const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
        const o = (this.#opts = {
            backoff: DEFAULT_BACKOFF,
            pingIntervalMs: 20_000,
            pingTimeoutMs: 10_000,
            ackDelayMs: 250,
            autoAck: true,
            refreshBeforeMs: 60_000,
            watchEnvironment: inBrowser,
            requestTimeoutMs: 30_000,
            connectTimeoutMs: 15_000,
            sendTimeoutMs: 15_000,
            maxFrameBytes: 65_536,
            ...given,
        });
        if (options.logger)
            this.logger = options.logger;
        this.#change = Object.freeze({ state: "idle", code: 0, reason: "", userId: null });
        const write = (f) => this.#conn.write(f);
        const isOpen = () => this.#conn.isOpen;
        const ref = () => this.#conn.ref();
        const error = (e) => this.emit("error", e);
        this.#tokens = new Tokens(o.getToken, o.refreshBeforeMs);
        this.#storage = options.storage ?? new MemoryStorage();
        this.#outbox = new Outbox(this.#storage, { ...o, locks: options.locks }, {
            write,
            isOpen,
            ref,
            me: () => this.#tokens.sub,
            status: (s) => this.emit("status", s),
            error,
            stalled: () => this.#conn.reconnectNow(),
        });
        this.#subs = new Subscriptions(o, { write, isOpen, ref, error, subscribed: (s) => this.emit("subscribed", s) });
        this.#conn = new Connection({ ...o, WebSocket: WS }, {
            token: async () => {
                await this.#outbox.loaded;
                const token = await this.#tokens.get(this.#tokens.force);
                this.#tokens.force = false;
                return token;
            },
            open: () => this.#onOpen(),
            frame: (f) => this.#onFrame(f),
            closed: (code, opened, attempt) => this.#onClosed(code, opened, attempt),
            state: (s, why) => {
                this.logger.debug?.(`chat-relay: ${s}`, why);
                if (s === "unauthorized") {
                    const err = new ChatRelayError("unauthorized", why.reason);
                    this.#subs.failWaiters(err);
                    for (const ref of [...this.#pending.keys()])
                        this.#fail(ref, err);
                }
                this.#change = Object.freeze({ state: s, ...why, userId: this.#tokens.sub });
                this.emit("state", s, why);
            },
            error,
        });
        if (options.environment)
            this.#unwatch = this.#conn.watch(options.environment);
        else if (o.watchEnvironment)
            this.#unwatch = this.#conn.watchBrowser();
    }
    // ------------------------------------------------------------------ API
    /** The current connection state. */
    get connectionState() {
        return this.#conn.state;
    }
    /** The signed-in user (the token's `sub`), once a token was fetched. */
    get userId() {
        return this.#tokens.sub;
    }
    /** The signed-in user: the token's `sub`, fetching a token if there is none yet; null when `getToken` fails. */
    user() {
        return this.#tokens.get(false).then(() => this.#tokens.sub, () => null);
    }
    /**
     * One conversation as a store (`getSnapshot`/`subscribe`, for
     * useSyncExternalStore): the same store for a chat id every time. It
     * subscribes to the chat while it has listeners.
     */
    chat(chatId, opts) {
        let store = this.#stores.get(chatId);
        if (!store)
            this.#stores.set(chatId, (store = new ChatStore(this, chatId, this.#storage, opts)));
        return store;
    }
    /** The conversation list as a store (protocol 1.2); the inbox is on while it has listeners. */
    inbox() {
        return (this.#inboxStore ??= new InboxStore(this));
    }
    /** The connection's state, why it is in it, and who: one frozen object per change (for useSyncExternalStore with the `state` event). */
    get connection() {
        return this.#change;
    }
    /** One page of the inbox (protocol 1.2): the first, or the one after `before` (an earlier page's `next`). Turns the inbox on. */
    async inboxPage(opts = {}, limit) {
        // (undefined fields are left out of the JSON)
        const a = await this.#request({ type: "inbox", before: opts.before, limit }, false);
        return {
            chats: Array.isArray(a.chats) ? a.chats : [],
            next: typeof a.next === "string" ? a.next : null,
            unreadChats: Number(a.unread_chats ?? 0),
        };
    }
    /** Turns the connection's inbox off (no more `chat` events). */
    inboxOff() {
        if (this.#conn.state === "open")
            this.#request({ type: "inbox_off" }, false).catch(() => { });
    }
    /** Opens the connection (subscribe and send do too). */
    connect() {
        this.#conn.connect();
    }
    /**
     * Subscribes to a chat; resolves once the backfill after `afterSeq` (or
     * the client's own cursor) has been delivered as `message` events.
     * Without either, starts after the chat's latest message.
     */
    subscribe(chatId, opts = {}) {
        const promise = this.#subs.subscribe(chatId, opts.afterSeq);
        this.connect();
        return promise;
    }
    /** Stops a chat's events (its cursor is kept for a later subscribe). */
    unsubscribe(chatId) {
        if (this.#subs.unsubscribe(chatId, new ChatRelayError("closed", "unsubscribed", { chatId }))) {
            // With a ref: its answer is told apart from a removal (which has none).
            this.#conn.write({ type: "unsubscribe", chat_id: chatId, ref: this.#conn.ref() });
        }
    }
    /** The highest seq delivered for a chat, or null. */
    cursor(chatId) {
        return this.#subs.chats.get(chatId)?.cursor ?? null;
    }
    /** Users online in a chat (from `subscribed` and `presence`). */
    online(chatId) {
        return [...(this.#subs.chats.get(chatId)?.online ?? [])];
    }
    /**
     * Sends a message. Returns at once with the optimistic message; the relay's
     * row arrives later as a `message` event whose `meta.replaces` names it.
     */
    send(chatId, content) {
        const { entry, done } = this.#outbox.add(chatId, content, uuid());
        this.connect();
        return { ...this.#outbox.view(entry), done };
    }
    /** The signed-in user's messages not stored yet, oldest first, failed ones included (to render after a reload). */
    pendingMessages(chatId) {
        return this.#outbox.pending(chatId);
    }
    /** Sends a failed message again; its new `done`, or null if no such failed message. */
    retry(clientGeneratedId) {
        return this.edit(clientGeneratedId);
    }
    /** Sends a failed message again (same id), with new `content` if given; its new `done`, or null. */
    edit(clientGeneratedId, content) {
        const done = this.#outbox.retry(clientGeneratedId, content);
        if (done)
            this.connect();
        return done;
    }
    /** Forgets a failed (or not yet sent) message, in storage too; false when there is none such or it is in flight. */
    discard(clientGeneratedId) {
        return this.#outbox.discard(clientGeneratedId);
    }
    /** Resolves when every message in the outbox has been stored (or failed). */
    flushed() {
        return this.#outbox.flushed();
    }
    /** The user has read a chat up to `seq`. */
    markRead(chatId, seq) {
        this.#subs.markRead(chatId, seq);
    }
    /** A page of older messages: the `limit` newest before `beforeSeq` (or the newest). */
    async history(chatId, opts = {}) {
        const frame = { type: "history", chat_id: chatId, before_seq: opts.beforeSeq, limit: opts.limit };
        const answer = await this.#request(frame, true);
        return { messages: answer.messages ?? [], hasMore: answer.has_more === true };
    }
    /** The user is typing in a chat: sent at most every 2 s, only while subscribed. */
    typing(chatId) {
        const chat = this.#subs.chats.get(chatId);
        const now = Date.now();
        if (!chat || !chat.ready || now - chat.lastTypingAt < 2000)
            return;
        chat.lastTypingAt = now;
        this.#conn.write({ type: "typing", chat_id: chatId });
    }
    /**
     * Goes offline on purpose (false): the socket closes and nothing reconnects;
     * sends queue in the outbox. Back online (true): reconnects at once.
     */
    setOnline(online) {
        this.#conn.setOnline(online);
    }
    /** Closes for good: no reconnects; pending requests fail with `closed`. */
    close() {
        if (this.#conn.closed)
            return;
        this.#conn.closed = true;
        if (this.#refreshTimer)
            clearTimeout(this.#refreshTimer);
        this.#outbox.close();
        this.#subs.close(new ChatRelayError("closed", "client closed"));
        for (const [ref, p] of this.#pending) {
            clearTimeout(p.timer);
            p.reject(new ChatRelayError("closed", "client closed"));
            this.#pending.delete(ref);
        }
        this.#conn.close();
        this.#unwatch?.();
    }
    // ------------------------------------------------------------ connection
    #onOpen() {
        this.#subs.opened();
        for (const [ref, p] of this.#pending) {
            if (p.resend)
                this.#conn.write({ ...p.frame, ref });
        }
        this.#outbox.flush();
        this.#scheduleRefresh();
    }
    #onClosed(code, opened, attempt) {
        this.#outbox.disconnected(code);
        this.#subs.disconnected();
        for (const [ref, p] of this.#pending) {
            if (!p.resend) {
                clearTimeout(p.timer);
                p.reject(new ChatRelayError("disconnected", "disconnected"));
                this.#pending.delete(ref);
            }
        }
        if (this.#conn.closed || this.#conn.manualOffline)
            return;
        // 4001: the token expired or was refused; fetch a new one. Not even
        // opened: maybe a refused token (HTTP 401), more likely the server is
        // down; a browser cannot tell, so once per run of failures. (A token
        // near expiry is fetched anyway.)
        if (code === 4001 || (!opened && attempt === 2))
            this.#tokens.force = true;
    }
    // ----------------------------------------------------------------- token
    #scheduleRefresh() {
        if (this.#refreshTimer)
            clearTimeout(this.#refreshTimer);
        this.#refreshTimer = null;
        const delay = this.#tokens.refreshIn();
        if (delay === null || this.#conn.closed)
            return;
        this.#refreshTimer = setTimeout(() => void this.#refresh(), delay);
    }
    /**
     * Fetches a new token and hands it to the open connection with `auth`.
     * The same token back (the app's cache): nothing is sent; asked again
     * later. Another user's token: the connection starts over as that user.
     */
    async #refresh() {
        this.#refreshTimer = null;
        const [before, who] = [this.#tokens.token, this.#tokens.sub];
        let token;
        try {
            token = await this.#tokens.get(true);
        }
        catch (e) {
            const err = e;
            this.emit("error", err);
            if (err.code === "unauthorized")
                return this.#conn.unauthorized(err.message);
            // Try again soon, while the old token may still be valid.
            this.#refreshTimer = setTimeout(() => void this.#refresh(), backoffDelay(++this.#refreshTries, this.#opts.backoff));
            return;
        }
        if (this.#conn.closed)
            return;
        if (token === before) {
            this.#refreshTimer = setTimeout(() => void this.#refresh(), this.#tokens.patience(backoffDelay(++this.#refreshTries, this.#opts.backoff)));
            return;
        }
        this.#refreshTries = 0;
        if (this.#tokens.sub !== who)
            return this.#conn.drop(4002, "user changed");
        if (this.#conn.isOpen && this.#conn.state === "open") {
            try {
                await this.#request({ type: "auth", access_token: token }, false);
            }
            catch (e) {
                // Refused: the relay closes with 4001 and the reconnect fetches anew.
                if (e instanceof ChatRelayError && e.code !== "disconnected")
                    this.emit("error", e);
            }
        }
        this.#scheduleRefresh();
    }
    // ---------------------------------------------------------------- frames
    #onFrame(f) {
        const chatId = typeof f.chat_id === "string" ? f.chat_id : "";
        const ref = f.ref === undefined || f.ref === null ? null : String(f.ref);
        switch (f.type) {
            case "message":
                return this.#onMessage(chatId, f.message);
            case "update": {
                const m = f.message;
                this.emit("update", m);
                if (typeof m?.status === "string") {
                    this.emit("status", {
                        chatId,
                        clientGeneratedId: m.client_generated_id ?? null,
                        id: m.id,
                        seq: m.seq,
                        status: m.status,
                    });
                }
                return;
            }
            case "delete":
                this.emit("delete", { chatId, seq: Number(f.seq), id: String(f.id) });
                return;
            case "receipt":
                this.emit("receipt", {
                    chat_id: chatId,
                    user_id: String(f.user_id),
                    delivered_seq: Number(f.delivered_seq),
                    read_seq: Number(f.read_seq),
                });
                return;
            case "subscribed":
                return this.#subs.onSubscribed(chatId, f, ref);
            case "unsubscribed":
                // With a ref: the answer to our unsubscribe. Without: a removal.
                if (ref === null) {
                    this.#subs.removed(chatId);
                    this.emit("unsubscribed", { chatId, reason: typeof f.reason === "string" ? f.reason : null });
                }
                return;
            case "sent":
                return this.#outbox.onSent(f, ref);
            case "pong":
                return this.#subs.onPong(ref);
            case "typing":
                // The relay echoes typing to the user's other connections (tabs): not news.
                if (f.user_id !== this.#tokens.sub)
                    this.emit("typing", { chatId, userId: String(f.user_id) });
                return;
            case "presence": {
                const userId = String(f.user_id);
                const online = f.online === true;
                this.#subs.presence(chatId, userId, online);
                this.emit("presence", { chatId, userId, online });
                return;
            }
            case "chat": {
                // The summary's fields, on the frame itself (or, tolerated, under `chat`).
                const { type: _type, ...summary } = (typeof f.chat === "object" && f.chat ? f.chat : f);
                return this.emit("chat", summary);
            }
            case "chat_removed":
                return this.emit("chatRemoved", { chatId });
            case "error":
                return this.#onError(f, ref);
            default:
                if (ref !== null)
                    this.#answer(ref, f);
        }
    }
    #onMessage(chatId, m) {
        if (!this.#subs.accept(chatId, m))
            return;
        const cgid = m.client_generated_id ?? null;
        let replaces = null;
        if (cgid !== null) {
            if (this.#outbox.settle(cgid, { id: m.id, seq: m.seq, duplicate: false })) {
                replaces = cgid;
            }
            else if (m.sender_id !== null && m.sender_id === this.#tokens.sub) {
                replaces = cgid; // sent earlier by this user (another tab, before a reload)
            }
        }
        this.emit("message", m, { replaces });
        if (this.#opts.autoAck && m.sender_id !== this.#tokens.sub)
            this.#subs.ack(chatId, m.seq);
    }
    #onError(f, ref) {
        const err = ChatRelayError.fromFrame(f);
        if (ref !== null && this.#subs.onError(ref, err))
            return;
        if (ref !== null && this.#outbox.onError(ref, err))
            return;
        const p = ref !== null && this.#pending.get(ref);
        if (p) {
            // Too many requests (history, inbox): the same frame again once the relay says, within the request's timeout.
            if (err.code === "rate_limited")
                setTimeout(() => this.#pending.get(ref) === p && this.#conn.write({ ...p.frame, ref }), err.retryAfterMs);
            else
                this.#fail(ref, err);
            return;
        }
        // Unasked: a subscription the relay could not keep ("subscribe again").
        if (err.chatId && err.code === "unavailable")
            this.#subs.lost(err.chatId);
        this.emit("error", err);
    }
    // -------------------------------------------------------------- requests
    #request(frame, resend) {
        if (this.#conn.closed)
            return Promise.reject(new ChatRelayError("closed", "client closed"));
        const ref = this.#conn.ref();
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => this.#fail(ref, new ChatRelayError("timeout", `no answer to ${String(frame.type)} in time`)), this.#opts.requestTimeoutMs);
            this.#pending.set(ref, { frame, resolve, reject, timer, resend });
            if (this.#conn.state === "open")
                this.#conn.write({ ...frame, ref });
            else if (!resend)
                this.#fail(ref, new ChatRelayError("disconnected", "not connected"));
            else
                this.connect();
        });
    }
    #answer(ref, f) {
        const p = this.#pending.get(ref);
        if (!p)
            return;
        clearTimeout(p.timer);
        this.#pending.delete(ref);
        p.resolve(f);
    }
    #fail(ref, err) {
        const p = this.#pending.get(ref);
        if (!p)
            return;
        clearTimeout(p.timer);
        this.#pending.delete(ref);
        p.reject(err);
    }
}
