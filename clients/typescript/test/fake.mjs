// A scripted stand-in for WebSocket: the test plays the relay.

export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}

export class Harness {
  constructor() {
    this.sockets = [];
    this.created = [];
    const h = this;
    this.WebSocket = class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        this.watchers = [];
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        h.sockets.push(this);
        for (const w of h.created.splice(0)) w();
      }
      send(data) {
        const f = JSON.parse(data);
        this.sent.push(f);
        for (const w of [...this.watchers]) w();
      }
      close(code = 1000) {
        if (this.readyState === 3) return;
        this.readyState = 3;
        queueMicrotask(() => this.onclose?.({ code }));
      }
      // --- the relay's side
      open() {
        this.readyState = 1;
        this.onopen?.({});
      }
      push(frame) {
        this.onmessage?.({ data: JSON.stringify(frame) });
      }
      drop(code = 1006, reason = "") {
        this.readyState = 3;
        this.onclose?.({ code, reason });
      }
      /** The first frame sent from index `from` on that matches. */
      frame(pred, from = 0) {
        return new Promise((resolve) => {
          const check = () => {
            const f = this.sent.slice(from).find(pred);
            if (f) {
              this.watchers = this.watchers.filter((w) => w !== check);
              resolve(f);
              return true;
            }
            return false;
          };
          if (!check()) this.watchers.push(check);
        });
      }
      /** Answers subscribe frames (from `from`) with `subscribed` + pong, replaying `backlog` in between. */
      async acceptSubscribe(chatId, { latest = 0, backlog = [], online = [], from = 0 } = {}) {
        const sub = await this.frame((f) => f.type === "subscribe" && f.chat_id === chatId, from);
        const ping = await this.frame((f) => f.type === "ping", this.sent.indexOf(sub));
        this.push({ type: "subscribed", chat_id: chatId, latest_seq: latest, online, ref: sub.ref });
        for (const m of backlog) this.push({ type: "message", chat_id: chatId, seq: m.seq, message: m });
        this.push({ type: "pong", ref: ping.ref });
        return sub;
      }
    };
  }

  /** The i-th socket the client opens (waits for it). */
  socket(i) {
    return new Promise((resolve) => {
      const check = () => {
        if (this.sockets[i]) resolve(this.sockets[i]);
        else this.created.push(check);
      };
      check();
    });
  }
}

export function row(chatId, seq, extra = {}) {
  return {
    id: extra.id ?? `00000000-0000-4000-8000-${String(seq).padStart(12, "0")}`,
    chat_id: chatId,
    seq,
    sender_id: extra.sender_id ?? "other-user",
    client_generated_id: extra.client_generated_id ?? null,
    content: extra.content ?? `m${seq}`,
    status: "sent",
  };
}

/** Resolves with the next emission of `event` matching `pred`. */
export function once(client, event, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(event, (...args) => {
      if (pred(...args)) {
        off();
        resolve(args.length === 1 ? args[0] : args);
      }
    });
  });
}

/** `p`, or a rejection naming `what` after `ms` (a bound on a wait, never a stand-in for one). */
export function within(p, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

/** Lets queued promise callbacks and microtasks run (under mocked timers too). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A chat summary, as protocol 1.2's `inbox` and `chat` carry it. */
export function summary(chatId, { seq = 0, at = "2026-01-01T00:00:00Z", unread = 0, last = null } = {}) {
  return {
    chat_id: chatId,
    last_seq: seq,
    last_message: last,
    last_activity: at,
    unread,
    read_seq: Math.max(0, seq - unread),
    delivered_seq: seq,
  };
}

/**
 * The relay's side of protocol 1.2's inbox on one fake socket: answers
 * `inbox` (pages in list order, `next` an opaque cursor) and `inbox_off`,
 * and pushes `chat` / `chat_removed` while the inbox is on.
 */
export class FakeInbox {
  constructor(ws, chats = []) {
    this.ws = ws;
    this.chats = [...chats];
    this.on = false;
    this.asked = [];
    this.hold = false;
    ws.watchers.push(() => this.answer());
    this.seen = 0;
    this.answer();
  }

  static order(a, b) {
    return Date.parse(b.last_activity) - Date.parse(a.last_activity) || (a.chat_id < b.chat_id ? -1 : a.chat_id > b.chat_id ? 1 : 0);
  }

  get unreadChats() {
    return this.chats.filter((c) => c.unread > 0).length;
  }

  answer() {
    for (; this.seen < this.ws.sent.length; this.seen++) {
      const f = this.ws.sent[this.seen];
      if (f.type === "inbox") {
        this.asked.push(f);
        if (this.hold) continue;
        this.page(f);
      } else if (f.type === "inbox_off") {
        this.on = false;
        queueMicrotask(() => this.ws.push({ type: "ok", ref: f.ref }));
      }
    }
  }

  /** Answers an `inbox` frame (the held ones: `release()`). */
  page(f) {
    this.on = true;
    const list = [...this.chats].sort(FakeInbox.order);
    const start = f.before === undefined ? 0 : Number(String(f.before).slice(2));
    const limit = Math.min(f.limit ?? 50, 200);
    const chats = list.slice(start, start + limit);
    const next = start + limit < list.length ? `p:${start + limit}` : null;
    queueMicrotask(() => this.ws.push({ type: "inbox", chats, next, unread_chats: this.unreadChats, ref: f.ref }));
  }

  /** A summary changed (or a chat was added): a `chat` frame when the inbox is on. */
  change(s) {
    this.chats = this.chats.filter((c) => c.chat_id !== s.chat_id).concat([s]);
    if (this.on) this.ws.push({ type: "chat", ...s, unread_chats: this.unreadChats });
  }

  remove(chatId) {
    this.chats = this.chats.filter((c) => c.chat_id !== chatId);
    if (this.on) this.ws.push({ type: "chat_removed", chat_id: chatId });
  }
}
