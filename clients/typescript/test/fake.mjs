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
