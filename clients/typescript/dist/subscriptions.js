/**
 * Subscriptions, one per chat: the cursor and the dedupe of what was handed
 * to the app, the `subscribe` + `ping` barrier that says the backfill has
 * arrived, resubscribes after reconnects, who is online, acks and reads.
 */
import { backoffDelay } from "./backoff.js";
import { ChatRelayError } from "./errors.js";
/** Seen ids remembered per chat (beyond the cursor, for rows re-inserted under an old id). */
const SEEN_LIMIT = 2000;
export class Subscriptions {
    o;
    h;
    chats = new Map();
    #barriers = new Map(); // ping ref -> chats
    #refs = new Map(); // subscribe ref -> chat
    #closed = null;
    constructor(o, h) {
        this.o = o;
        this.h = h;
    }
    chat(chatId) {
        let chat = this.chats.get(chatId);
        if (!chat) {
            chat = {
                wanted: false,
                cursor: null,
                ready: false,
                latestSeq: 0,
                online: new Set(),
                onlineTruncated: false,
                seenIds: new Set(),
                seenCgids: new Set(),
                seenOrder: [],
                waiters: [],
                ackSeq: 0,
                ackedSeq: 0,
                ackTimer: null,
                readSeq: 0,
                readSent: 0,
                lastTypingAt: 0,
                retryTimer: null,
                retries: 0,
            };
            this.chats.set(chatId, chat);
        }
        return chat;
    }
    /** Resolves once live (the backfill delivered); rejects after `requestTimeoutMs`, though the subscription keeps trying. */
    subscribe(chatId, afterSeq) {
        if (this.#closed)
            return Promise.reject(this.#closed);
        const chat = this.chat(chatId);
        if (afterSeq !== undefined && (chat.cursor === null || afterSeq > chat.cursor))
            chat.cursor = afterSeq;
        const promise = new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                chat.waiters = chat.waiters.filter((w) => w !== waiter);
                reject(new ChatRelayError("timeout", "no subscription in time", { chatId }));
            }, this.o.requestTimeoutMs);
            const waiter = {
                resolve: (s) => (clearTimeout(timer), resolve(s)),
                reject: (e) => (clearTimeout(timer), reject(e)),
            };
            chat.waiters.push(waiter);
        });
        promise.catch(() => { });
        if (chat.wanted && chat.ready) {
            this.#settleWaiters(chatId, chat);
            return promise;
        }
        const already = chat.wanted;
        chat.wanted = true;
        if (this.h.isOpen() && !already)
            this.#send(chatId);
        return promise;
    }
    /** Stops a chat (keeping its cursor); false when it was not subscribed. */
    unsubscribe(chatId, err) {
        const chat = this.chats.get(chatId);
        if (!chat || !chat.wanted)
            return false;
        chat.wanted = false;
        chat.ready = false;
        chat.online.clear();
        this.#forget(chatId);
        this.#rejectWaiters(chat, err);
        return true;
    }
    /** Answers still owed to earlier subscribes of a chat no longer count. */
    #forget(chatId) {
        for (const [ref, c] of this.#refs)
            if (c === chatId)
                this.#refs.delete(ref);
        for (const [ref, chats] of this.#barriers) {
            const rest = chats.filter((c) => c !== chatId);
            if (rest.length)
                this.#barriers.set(ref, rest);
            else
                this.#barriers.delete(ref);
        }
    }
    /** The connection is open: resubscribe, resend reads, acks. */
    opened() {
        for (const [chatId, chat] of this.chats) {
            if (chat.wanted)
                this.#send(chatId);
            if (chat.readSeq > chat.readSent)
                this.#sendRead(chatId, chat);
            if (chat.ackSeq > chat.ackedSeq)
                this.#scheduleAck(chatId, chat);
        }
    }
    /** The connection is gone: every subscription must be asked for again. */
    disconnected() {
        this.#barriers.clear();
        this.#refs.clear();
        for (const chat of this.chats.values())
            chat.ready = false;
    }
    /** Every waiting `subscribe()` fails with `err` (the subscriptions stay wanted). */
    failWaiters(err) {
        for (const chat of this.chats.values())
            this.#rejectWaiters(chat, err);
    }
    close(err) {
        this.#closed = err;
        for (const chat of this.chats.values()) {
            if (chat.ackTimer)
                clearTimeout(chat.ackTimer);
            if (chat.retryTimer)
                clearTimeout(chat.retryTimer);
            this.#rejectWaiters(chat, err);
        }
    }
    /** Whether a row is new for the app (above the cursor, never seen); if so, the cursor moves to it. */
    accept(chatId, m) {
        const chat = this.chats.get(chatId);
        // Not subscribed (any more): a later subscribe reads it from the cursor.
        if (!chat || !chat.wanted || !m || typeof m.seq !== "number")
            return false;
        if (chat.cursor !== null && m.seq <= chat.cursor)
            return false;
        if (chat.seenIds.has(m.id))
            return false;
        const cgid = m.client_generated_id ?? null;
        if (cgid !== null && chat.seenCgids.has(cgid))
            return false;
        chat.cursor = m.seq;
        remember(chat, m.id, cgid);
        return true;
    }
    onSubscribed(chatId, f, ref) {
        if (ref === null || this.#refs.get(ref) !== chatId)
            return;
        this.#refs.delete(ref);
        const chat = this.chats.get(chatId);
        if (!chat || !chat.wanted)
            return;
        chat.latestSeq = Number(f.latest_seq ?? 0);
        if (chat.cursor === null)
            chat.cursor = chat.latestSeq;
        chat.online = new Set(Array.isArray(f.online) ? f.online.map(String) : []);
        chat.onlineTruncated = f.online_truncated === true;
    }
    /** A pong: the chats whose barrier it was are live. */
    onPong(ref) {
        if (ref === null)
            return;
        const chats = this.#barriers.get(ref);
        if (!chats)
            return;
        this.#barriers.delete(ref);
        for (const chatId of chats) {
            const chat = this.chats.get(chatId);
            if (!chat || !chat.wanted || chat.ready)
                continue;
            chat.ready = true;
            chat.retries = 0;
            this.h.subscribed(this.subscription(chatId, chat));
            this.#settleWaiters(chatId, chat);
        }
    }
    /** An `error` answering a `subscribe`; false if `ref` was none. */
    onError(ref, err) {
        const chatId = this.#refs.get(ref);
        if (chatId === undefined)
            return false;
        // Its barrier's pong follows the refusal: it must not make the chat live.
        this.#forget(chatId);
        const chat = this.chats.get(chatId);
        if (!chat)
            return true;
        if (err.retryable) {
            this.#retry(chatId, chat, err.retryAfterMs);
        }
        else {
            chat.wanted = false;
            this.#rejectWaiters(chat, err);
            this.h.error(err);
        }
        return true;
    }
    /** The relay could not keep a subscription: ask again. */
    lost(chatId) {
        const chat = this.chats.get(chatId);
        if (chat?.wanted) {
            chat.ready = false;
            this.#retry(chatId, chat);
        }
    }
    /** The relay ended a subscription (removal). */
    removed(chatId) {
        this.unsubscribe(chatId, new ChatRelayError("forbidden", "removed from the chat", { chatId }));
    }
    presence(chatId, userId, online) {
        const chat = this.chats.get(chatId);
        if (!chat)
            return;
        if (online)
            chat.online.add(userId);
        else
            chat.online.delete(userId);
    }
    #send(chatId) {
        const chat = this.chats.get(chatId);
        if (!chat || !this.h.isOpen())
            return;
        const ref = this.h.ref();
        this.#refs.set(ref, chatId);
        this.h.write({ type: "subscribe", chat_id: chatId, ref, after_seq: chat.cursor ?? undefined });
        // The pong comes after everything the subscribe owes: the backfill.
        const barrier = this.h.ref();
        this.#barriers.set(barrier, [chatId]);
        this.h.write({ type: "ping", ref: barrier });
    }
    #retry(chatId, chat, afterMs) {
        if (chat.retryTimer)
            return;
        chat.retryTimer = setTimeout(() => {
            chat.retryTimer = null;
            if (chat.wanted && !chat.ready)
                this.#send(chatId);
        }, afterMs ?? backoffDelay(chat.retries++, this.o.backoff));
    }
    subscription(chatId, chat) {
        return { chatId, latestSeq: chat.latestSeq, online: [...chat.online], onlineTruncated: chat.onlineTruncated };
    }
    #settleWaiters(chatId, chat) {
        const sub = this.subscription(chatId, chat);
        for (const w of chat.waiters.splice(0))
            w.resolve(sub);
    }
    #rejectWaiters(chat, err) {
        for (const w of chat.waiters.splice(0))
            w.reject(err);
    }
    // ------------------------------------------------------------ acks, reads
    ack(chatId, seq) {
        const chat = this.chat(chatId);
        chat.ackSeq = Math.max(chat.ackSeq, seq);
        this.#scheduleAck(chatId, chat);
    }
    markRead(chatId, seq) {
        const chat = this.chat(chatId);
        if (seq <= chat.readSeq)
            return;
        chat.readSeq = seq;
        this.#sendRead(chatId, chat);
    }
    #scheduleAck(chatId, chat) {
        if (chat.ackTimer)
            return;
        chat.ackTimer = setTimeout(() => {
            chat.ackTimer = null;
            if (chat.ackSeq > chat.ackedSeq && this.h.write({ type: "ack", chat_id: chatId, seq: chat.ackSeq })) {
                chat.ackedSeq = chat.ackSeq;
            }
        }, this.o.ackDelayMs);
    }
    #sendRead(chatId, chat) {
        if (this.h.write({ type: "read", chat_id: chatId, seq: chat.readSeq }))
            chat.readSent = chat.readSeq;
    }
}
function remember(chat, id, cgid) {
    chat.seenIds.add(id);
    if (cgid !== null)
        chat.seenCgids.add(cgid);
    chat.seenOrder.push([id, cgid]);
    while (chat.seenOrder.length > SEEN_LIMIT) {
        const old = chat.seenOrder.shift();
        if (!old)
            break;
        chat.seenIds.delete(old[0]);
        if (old[1] !== null)
            chat.seenCgids.delete(old[1]);
    }
}
