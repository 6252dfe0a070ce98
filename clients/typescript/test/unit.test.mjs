// The client's state machine against a scripted relay (test/fake.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, ChatRelayClient, ChatRelayError, MemoryStorage } from "../dist/index.js";
import { Harness, jwt, once, row } from "./fake.mjs";

const ME = "11111111-1111-4111-8111-111111111111";
const CHAT = "c0000000-0000-4000-8000-000000000001";

function client(h, extra = {}) {
  let calls = 0;
  const c = new ChatRelayClient({
    url: "ws://relay.test/v1/ws",
    WebSocket: h.WebSocket,
    getToken: extra.getToken ?? (async () => jwt({ sub: ME, exp: Math.floor(Date.now() / 1000) + 3600, n: ++calls })),
    backoff: { initialMs: 10, maxMs: 40 },
    ackDelayMs: 20,
    ...extra,
  });
  return c;
}

test("subscribed comes after the backfill; seqs at or below the cursor and seen ids are dropped", async () => {
  const h = new Harness();
  const c = client(h);
  const got = [];
  c.on("message", (m) => got.push(m.seq));
  let subscribedAt = -1;
  c.on("subscribed", () => (subscribedAt = got.length));
  const done = c.subscribe(CHAT, { afterSeq: 2 });
  const ws = await h.socket(0);
  assert.match(ws.url, /access_token=/);
  ws.open();
  const sub = await ws.acceptSubscribe(CHAT, { latest: 5, backlog: [row(CHAT, 3), row(CHAT, 4), row(CHAT, 5)] });
  assert.equal(sub.after_seq, 2);
  const s = await done;
  assert.equal(s.latestSeq, 5);
  assert.equal(subscribedAt, 3, "subscribed only once the backfill had arrived");
  // Replays and duplicates: dropped.
  ws.push({ type: "message", chat_id: CHAT, seq: 4, message: row(CHAT, 4) });
  ws.push({ type: "message", chat_id: CHAT, seq: 6, message: row(CHAT, 6) });
  ws.push({ type: "message", chat_id: CHAT, seq: 7, message: row(CHAT, 7, { id: row(CHAT, 6).id }) });
  ws.push({ type: "message", chat_id: CHAT, seq: 8, message: row(CHAT, 8) });
  assert.deepEqual(got, [3, 4, 5, 6, 8]);
  assert.equal(c.cursor(CHAT), 8);
  c.close();
});

test("every reconnect resubscribes with after_seq = the cursor", async () => {
  const h = new Harness();
  const c = client(h);
  const got = [];
  c.on("message", (m) => got.push(m.seq));
  c.subscribe(CHAT);
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.acceptSubscribe(CHAT, { latest: 10 });
  ws0.push({ type: "message", chat_id: CHAT, seq: 11, message: row(CHAT, 11) });
  ws0.drop(1006);
  const ws1 = await h.socket(1);
  ws1.open();
  const again = once(c, "subscribed");
  const sub = await ws1.acceptSubscribe(CHAT, { latest: 13, backlog: [row(CHAT, 11), row(CHAT, 12), row(CHAT, 13)] });
  assert.equal(sub.after_seq, 11);
  await again;
  assert.deepEqual(got, [11, 12, 13]);
  c.close();
});

test("send returns at once, survives a drop with the same id, and the echo replaces it", async () => {
  const h = new Harness();
  const c = client(h);
  c.subscribe(CHAT);
  const statuses = [];
  c.on("status", (s) => statuses.push(s.status));
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.acceptSubscribe(CHAT, { latest: 0 });
  ws0.drop(1006); // offline before sending
  const out = c.send(CHAT, "hello");
  assert.equal(out.status, "pending");
  assert.match(out.client_generated_id, /^[0-9a-f-]{36}$/);
  assert.deepEqual(c.pendingMessages(CHAT).map((p) => p.content), ["hello"]);
  const ws1 = await h.socket(1);
  ws1.open();
  const first = await ws1.frame((f) => f.type === "send");
  assert.equal(first.client_generated_id, out.client_generated_id);
  ws1.drop(1006); // lost before `sent`
  const ws2 = await h.socket(2);
  ws2.open();
  await ws2.acceptSubscribe(CHAT, { latest: 0 });
  const retry = await ws2.frame((f) => f.type === "send");
  assert.equal(retry.client_generated_id, out.client_generated_id, "retried with the same id");
  const replaced = once(c, "message");
  const echo = row(CHAT, 1, { sender_id: ME, client_generated_id: out.client_generated_id, content: "hello" });
  ws2.push({ type: "message", chat_id: CHAT, seq: 1, message: echo });
  const [m, meta] = await replaced;
  assert.equal(meta.replaces, out.client_generated_id);
  assert.equal(m.seq, 1);
  ws2.push({ type: "sent", chat_id: CHAT, client_generated_id: out.client_generated_id, id: echo.id, seq: 1, duplicate: true, ref: retry.ref });
  assert.deepEqual(await out.done, { id: echo.id, seq: 1, duplicate: false });
  assert.deepEqual(c.pendingMessages(), []);
  assert.deepEqual(statuses, ["pending", "sent"]);
  c.close();
});

test("one send in flight per chat keeps order; rate_limited waits retry_after_ms", async () => {
  const h = new Harness();
  const c = client(h);
  const a = c.send(CHAT, "one");
  const b = c.send(CHAT, "two");
  const ws = await h.socket(0);
  ws.open();
  const s1 = await ws.frame((f) => f.type === "send");
  assert.equal(ws.sent.filter((f) => f.type === "send").length, 1, "the second waits for the first");
  const t = Date.now();
  ws.push({ type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 60, ref: s1.ref });
  const s1again = await ws.frame((f) => f.type === "send", ws.sent.indexOf(s1) + 1);
  assert.ok(Date.now() - t >= 55, "waited for retry_after_ms");
  assert.equal(s1again.client_generated_id, a.client_generated_id, "the first again, not the second");
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: a.client_generated_id, id: "i1", seq: 1, duplicate: false, ref: s1again.ref });
  const s2 = await ws.frame((f) => f.type === "send" && f.client_generated_id === b.client_generated_id);
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: b.client_generated_id, id: "i2", seq: 2, duplicate: false, ref: s2.ref });
  assert.equal((await a.done).seq, 1);
  assert.equal((await b.done).seq, 2);
  c.close();
});

test("a refused send fails for good with a typed, non-retryable error", async () => {
  const h = new Harness();
  const c = client(h);
  const errors = [];
  c.on("error", (e) => errors.push(e));
  const failed = once(c, "status", (s) => s.status === "failed");
  const out = c.send(CHAT, "not mine");
  const ws = await h.socket(0);
  ws.open();
  const s = await ws.frame((f) => f.type === "send");
  ws.push({ type: "error", code: "forbidden", message: "not a participant", chat_id: CHAT, ref: s.ref });
  await failed;
  await assert.rejects(out.done, (e) => e instanceof ChatRelayError && e.code === "forbidden" && e.retryable === false);
  assert.equal(errors[0].code, "forbidden");
  assert.deepEqual(c.pendingMessages(), []);
  c.close();
});

test("the outbox is loaded from storage: a new client sends what the old one could not", async () => {
  const storage = new MemoryStorage();
  const h1 = new Harness();
  const c1 = client(h1, { storage });
  const out = c1.send(CHAT, "before the reload");
  c1.close();
  assert.equal((await storage.load()).length, 1);
  const h2 = new Harness();
  const c2 = client(h2, { storage });
  c2.connect();
  const ws = await h2.socket(0);
  ws.open();
  const s = await ws.frame((f) => f.type === "send");
  assert.equal(s.client_generated_id, out.client_generated_id);
  assert.equal(s.content, "before the reload");
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: s.client_generated_id, id: "i", seq: 1, duplicate: false, ref: s.ref });
  await c2.flushed();
  assert.equal((await storage.load()).length, 0);
  c2.close();
});

test("tokens: refreshed with auth before expiry, no resubscribe, one getToken at a time", async () => {
  const h = new Harness();
  let calls = 0;
  let release;
  let refreshing;
  const started = new Promise((r) => (refreshing = r));
  const c = client(h, {
    getToken: async () => {
      calls += 1;
      if (calls === 2) {
        refreshing();
        await new Promise((r) => (release = r));
      }
      return jwt({ sub: ME, exp: Math.floor(Date.now() / 1000) + 2, n: calls });
    },
  });
  c.subscribe(CHAT);
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.acceptSubscribe(CHAT, { latest: 0 });
  // Lifetime 2 s: the refresh starts a quarter before expiry.
  await started;
  // The socket drops while that request is in flight: the reconnect waits
  // for the same request instead of starting another.
  ws0.drop(1006);
  const ws1 = await Promise.race([h.socket(1), new Promise((r) => setTimeout(r, 100, null))]);
  assert.equal(ws1, null, "no socket before the token came");
  release();
  const ws1b = await h.socket(1);
  assert.equal(calls, 2, "one getToken for the refresh and the reconnect together");
  const claims = JSON.parse(Buffer.from(decodeURIComponent(ws1b.url.split("access_token=")[1]).split(".")[1], "base64url"));
  assert.equal(claims.n, 2);
  ws1b.open();
  await ws1b.acceptSubscribe(CHAT, { latest: 0 });
  // The next refresh goes over the open socket with `auth`, without a resubscribe.
  const auth = await ws1b.frame((f) => f.type === "auth");
  assert.equal(JSON.parse(Buffer.from(auth.access_token.split(".")[1], "base64url")).n, 3);
  ws1b.push({ type: "ok", ref: auth.ref });
  assert.equal(ws1b.sent.filter((f) => f.type === "subscribe").length, 1, "no resubscribe");
  assert.equal(h.sockets.length, 2, "no reconnect");
  c.close();
});

test("a socket that answers nothing to a ping is replaced", async () => {
  const h = new Harness();
  const c = client(h, { pingIntervalMs: 20, pingTimeoutMs: 30 });
  c.subscribe(CHAT);
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.acceptSubscribe(CHAT, { latest: 0 });
  await ws0.frame((f) => f.type === "ping" && !ws0.sent.some((g) => g.type === "subscribe" && g === f), 2);
  // Silence: the client gives up on it and dials again.
  const ws1 = await h.socket(1);
  assert.equal(ws0.readyState, 3);
  ws1.open();
  const sub = await ws1.acceptSubscribe(CHAT, { latest: 0 });
  assert.equal(sub.after_seq, 0);
  c.close();
});

test("acks are debounced: many messages, one ack with the highest seq", async () => {
  const h = new Harness();
  const c = client(h);
  c.subscribe(CHAT);
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest: 0 });
  for (let s = 1; s <= 5; s++) ws.push({ type: "message", chat_id: CHAT, seq: s, message: row(CHAT, s) });
  // Own messages are not acked.
  ws.push({ type: "message", chat_id: CHAT, seq: 6, message: row(CHAT, 6, { sender_id: ME }) });
  const ack = await ws.frame((f) => f.type === "ack");
  assert.deepEqual(ack, { type: "ack", chat_id: CHAT, seq: 5 });
  c.markRead(CHAT, 6);
  assert.deepEqual(await ws.frame((f) => f.type === "read"), { type: "read", chat_id: CHAT, seq: 6 });
  assert.equal(ws.sent.filter((f) => f.type === "ack").length, 1);
  c.close();
});

test("presence and typing: the online set follows presence frames; typing is throttled", async () => {
  const h = new Harness();
  const c = client(h);
  c.subscribe(CHAT);
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest: 0, online: [ME, "bob"] });
  assert.deepEqual(c.online(CHAT).sort(), [ME, "bob"].sort());
  ws.push({ type: "presence", chat_id: CHAT, user_id: "bob", online: false });
  ws.push({ type: "presence", chat_id: CHAT, user_id: "carol", online: true });
  assert.deepEqual(c.online(CHAT).sort(), [ME, "carol"].sort());
  const typing = once(c, "typing");
  ws.push({ type: "typing", chat_id: CHAT, user_id: "carol" });
  assert.deepEqual(await typing, { chatId: CHAT, userId: "carol" });
  c.typing(CHAT);
  c.typing(CHAT);
  assert.equal(ws.sent.filter((f) => f.type === "typing").length, 1);
  c.close();
});

test("history waits for the connection and is asked again after a drop", async () => {
  const h = new Harness();
  const c = client(h);
  const page = c.history(CHAT, { beforeSeq: 50, limit: 2 });
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.frame((f) => f.type === "history");
  ws0.drop(1006);
  const ws1 = await h.socket(1);
  ws1.open();
  const q = await ws1.frame((f) => f.type === "history");
  assert.equal(q.before_seq, 50);
  ws1.push({ type: "history", chat_id: CHAT, messages: [row(CHAT, 48), row(CHAT, 49)], has_more: true, ref: q.ref });
  const p = await page;
  assert.deepEqual(p.messages.map((m) => m.seq), [48, 49]);
  assert.equal(p.hasMore, true);
  c.close();
});

test("removal: unsubscribed forbidden ends the subscription for good", async () => {
  const h = new Harness();
  const c = client(h);
  c.subscribe(CHAT);
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest: 0 });
  const gone = once(c, "unsubscribed");
  ws.push({ type: "unsubscribed", chat_id: CHAT, reason: "forbidden" });
  assert.deepEqual(await gone, { chatId: CHAT, reason: "forbidden" });
  ws.push({ type: "message", chat_id: CHAT, seq: 1, message: row(CHAT, 1) });
  ws.drop(1006);
  const ws1 = await h.socket(1);
  ws1.open();
  await ws1.frame((f) => f.type === "ping" || f.type === "subscribe");
  assert.equal(ws1.sent.filter((f) => f.type === "subscribe").length, 0, "not resubscribed");
  c.close();
});

test("backoff grows, is jittered and capped", () => {
  const opts = { initialMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(0, opts, () => 0), 50);
  assert.equal(backoffDelay(0, opts, () => 1), 100);
  assert.equal(backoffDelay(3, opts, () => 1), 800);
  assert.equal(backoffDelay(10, opts, () => 1), 1000);
  assert.equal(backoffDelay(10, opts, () => 0), 500);
});

test("error codes say which are retryable", () => {
  const e = ChatRelayError.fromFrame({ code: "rate_limited", message: "x", retry_after_ms: 120, chat_id: CHAT });
  assert.equal(e.retryable, true);
  assert.equal(e.retryAfterMs, 120);
  assert.equal(e.chatId, CHAT);
  for (const code of ["bad_request", "forbidden", "unauthorized", "not_found"]) {
    assert.equal(new ChatRelayError(code, "").retryable, false, code);
  }
  for (const code of ["unavailable", "internal", "disconnected", "timeout"]) {
    assert.equal(new ChatRelayError(code, "").retryable, true, code);
  }
});
