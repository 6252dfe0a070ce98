// The client's state machine against a scripted relay (test/fake.mjs).
import assert from "node:assert/strict";
import { afterEach, mock, test } from "node:test";

import * as lib from "../dist/index.js";
import { backoffDelay, ChatRelayClient, ChatRelayError, MemoryStorage } from "../dist/index.js";
import { Harness, jwt, once, row, settle, within } from "./fake.mjs";

const ME = "11111111-1111-4111-8111-111111111111";
const CHAT = "c0000000-0000-4000-8000-000000000001";

const live = [];
afterEach(() => {
  for (const c of live.splice(0)) c.close();
  mock.timers.reset();
});

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
  live.push(c);
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

test("rate_limited on subscribe: asked again after retry_after_ms; the pong behind the refusal does not make it live", async () => {
  const h = new Harness();
  const c = client(h);
  let live = false;
  const done = c.subscribe(CHAT).then((s) => ((live = true), s));
  const ws = await h.socket(0);
  ws.open();
  const s1 = await ws.frame((f) => f.type === "subscribe");
  const ping = await ws.frame((f) => f.type === "ping", ws.sent.indexOf(s1));
  const t = Date.now();
  // What the relay does: the refusal, then the pong of the barrier ping.
  ws.push({ type: "error", code: "rate_limited", message: "too many requests", chat_id: CHAT, retry_after_ms: 60, ref: s1.ref });
  ws.push({ type: "pong", ref: ping.ref });
  await settle();
  assert.equal(live, false, "not live: the relay refused the subscribe");
  const from = ws.sent.indexOf(s1) + 1;
  await within(ws.acceptSubscribe(CHAT, { latest: 3, from }), 2000, "a second subscribe");
  assert.ok(Date.now() - t >= 55, "waited for retry_after_ms");
  assert.equal((await done).latestSeq, 3);
  c.close();
});

test("rate_limited on history: asked again after retry_after_ms, and the page resolves", async () => {
  const h = new Harness();
  const c = client(h);
  const page = c.history(CHAT, { beforeSeq: 50, limit: 2 });
  const ws = await h.socket(0);
  ws.open();
  const q1 = await ws.frame((f) => f.type === "history");
  const t = Date.now();
  ws.push({ type: "error", code: "rate_limited", message: "too many requests", chat_id: CHAT, retry_after_ms: 60, ref: q1.ref });
  const q2 = await within(ws.frame((f) => f.type === "history", ws.sent.indexOf(q1) + 1), 2000, "a second history");
  assert.ok(Date.now() - t >= 55, "waited for retry_after_ms");
  assert.equal(q2.before_seq, 50);
  ws.push({ type: "history", chat_id: CHAT, messages: [row(CHAT, 48), row(CHAT, 49)], has_more: true, ref: q2.ref });
  assert.deepEqual((await page).messages.map((m) => m.seq), [48, 49]);
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
  // Kept, marked failed, for the app to retry, edit or discard; never sent again on its own.
  assert.deepEqual(c.pendingMessages().map((p) => [p.client_generated_id, p.status, p.error]), [[out.client_generated_id, "failed", "forbidden"]]);
  assert.equal(ws.sent.filter((f) => f.type === "send").length, 1);
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

// ------------------------------------------------------------ regressions

const OTHER = "22222222-2222-4222-8222-222222222222";
const CHAT2 = "c0000000-0000-4000-8000-000000000002";
const subOf = (url) => JSON.parse(Buffer.from(decodeURIComponent(url.split("access_token=")[1]).split(".")[1], "base64url")).sub;

test("B1: a message over the frame limit is never sent, is marked failed and kept; the chat goes on", async () => {
  const storage = new MemoryStorage();
  const h = new Harness();
  const c = client(h, { storage, maxFrameBytes: 1000 });
  const failed = once(c, "status", (s) => s.status === "failed");
  const big = c.send(CHAT, "x".repeat(2000));
  const small = c.send(CHAT, "small");
  const ws = await h.socket(0);
  ws.open();
  const s = await ws.frame((f) => f.type === "send");
  assert.equal(s.content, "small", "the oversized message never went out, and did not block the next");
  await within(failed, 1000, "a failed status");
  await assert.rejects(big.done, (e) => e instanceof ChatRelayError && e.code === "too_large" && e.retryable === false);
  assert.deepEqual(
    c.pendingMessages(CHAT).map((p) => [p.content.length, p.status]),
    [[2000, "failed"], [5, "pending"]],
  );
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: small.client_generated_id, id: "i1", seq: 1, duplicate: false, ref: s.ref });
  await small.done;
  const kept = await storage.load();
  assert.deepEqual(kept.map((e) => [e.client_generated_id, e.status]), [[big.client_generated_id, "failed"]], "kept in storage, as failed");
  // edit() makes it sendable again; it goes out as it is now.
  c.edit(big.client_generated_id, "shorter now");
  const again = await ws.frame((f) => f.type === "send" && f.client_generated_id === big.client_generated_id);
  assert.equal(again.content, "shorter now");
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: big.client_generated_id, id: "i2", seq: 2, duplicate: false, ref: again.ref });
  await c.flushed();
  assert.deepEqual(await storage.load(), []);
});

test("B1: a send the relay answers by closing the socket (1009) is failed, not sent again after the reconnect", async () => {
  const storage = new MemoryStorage();
  const h = new Harness();
  const c = client(h, { storage });
  const poison = c.send(CHAT, "poison");
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.frame((f) => f.type === "send");
  const failed = once(c, "status", (s) => s.status === "failed");
  ws0.drop(1009, "frame too large");
  await within(failed, 1000, "the message marked failed");
  await assert.rejects(poison.done, (e) => e instanceof ChatRelayError && e.code === "too_large");
  const next = c.send(CHAT, "next");
  const ws1 = await h.socket(1);
  ws1.open();
  const s = await ws1.frame((f) => f.type === "send");
  assert.equal(s.client_generated_id, next.client_generated_id, "the poison is not retried on its own");
  ws1.push({ type: "sent", chat_id: CHAT, client_generated_id: next.client_generated_id, id: "n", seq: 1, duplicate: false, ref: s.ref });
  await next.done;
  // A reload keeps it failed: nothing goes out by itself.
  c.close();
  const h2 = new Harness();
  const c2 = client(h2, { storage });
  assert.deepEqual((await storage.load()).map((e) => e.status), ["failed"]);
  c2.connect();
  const ws2 = await h2.socket(0);
  ws2.open();
  await c2.subscribe(CHAT).catch(() => {});
  assert.deepEqual(ws2.sent.filter((f) => f.type === "send"), []);
  assert.deepEqual(c2.pendingMessages(CHAT).map((p) => p.status), ["failed"]);
  // discard() forgets it, in storage too.
  await c2.discard(poison.client_generated_id);
  assert.deepEqual(c2.pendingMessages(CHAT), []);
  assert.deepEqual(await storage.load(), []);
});

test("B2: the outbox is per user: another user's token never carries the first user's messages", async () => {
  const storage = new MemoryStorage();
  const h = new Harness();
  let user = ME;
  const c = client(h, { storage, getToken: async () => jwt({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 }) });
  c.connect();
  const ws0 = await h.socket(0);
  ws0.open();
  assert.equal(c.userId, ME);
  // The token is refused (signed out), a message is queued, and someone else signs in.
  ws0.drop(4001);
  const mine = c.send(CHAT, "from me");
  user = OTHER;
  const ws1 = await h.socket(1);
  assert.equal(subOf(ws1.url), OTHER);
  ws1.open();
  await Promise.all([c.subscribe(CHAT), ws1.acceptSubscribe(CHAT)]);
  assert.deepEqual(ws1.sent.filter((f) => f.type === "send"), [], "nothing of the first user's outbox on the second user's socket");
  assert.deepEqual(c.pendingMessages(), [], "the second user does not see the first user's queue");
  const theirs = c.send(CHAT, "from the other");
  const s = await ws1.frame((f) => f.type === "send");
  assert.equal(s.client_generated_id, theirs.client_generated_id);
  ws1.push({ type: "sent", chat_id: CHAT, client_generated_id: s.client_generated_id, id: "o", seq: 1, duplicate: false, ref: s.ref });
  // The first user signs in again: their message goes out now.
  user = ME;
  ws1.drop(4001);
  const ws2 = await h.socket(2);
  ws2.open();
  const back = await ws2.frame((f) => f.type === "send");
  assert.equal(back.client_generated_id, mine.client_generated_id);
});

test("B3: stored entries go out before a message sent while they were still loading", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  class SlowStorage extends MemoryStorage {
    async load() {
      await gate;
      return super.load();
    }
  }
  const storage = new SlowStorage();
  await storage.put({ chat_id: CHAT, client_generated_id: "00000000-0000-4000-8000-0000000000aa", content: "old", sender_id: ME, created_at: 1, order: 1 });
  const h = new Harness();
  const c = client(h, { storage });
  const fresh = c.send(CHAT, "new");
  release();
  const ws = await h.socket(0);
  ws.open();
  const first = await ws.frame((f) => f.type === "send");
  assert.equal(first.content, "old", "the older message first");
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: first.client_generated_id, id: "a", seq: 1, duplicate: false, ref: first.ref });
  const second = await ws.frame((f) => f.type === "send" && f !== first);
  assert.equal(second.client_generated_id, fresh.client_generated_id);
  // And the stored order says so too, for the next reload.
  const stored = await super_load(storage);
  assert.deepEqual(stored.map((e) => e.content), ["new"]);
});
function super_load(storage) {
  return MemoryStorage.prototype.load.call(storage);
}

test("B3: the stored order of a message sent before the load is after the loaded ones", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  const storage = new MemoryStorage();
  const load = storage.load.bind(storage);
  storage.load = async () => {
    await gate;
    return load();
  };
  await storage.put({ chat_id: CHAT, client_generated_id: "00000000-0000-4000-8000-0000000000bb", content: "old", sender_id: ME, created_at: 1, order: 7 });
  const h = new Harness();
  const c = client(h, { storage });
  c.send(CHAT, "new");
  release();
  await c.ready?.();
  await settle();
  assert.deepEqual((await load()).map((e) => e.content), ["old", "new"]);
  assert.deepEqual(c.pendingMessages(CHAT).map((p) => p.content), ["old", "new"]);
});

test("B4: a socket stuck connecting is replaced after connectTimeoutMs", async () => {
  const h = new Harness();
  const c = client(h, { connectTimeoutMs: 50 });
  const sub = c.subscribe(CHAT);
  const ws0 = await h.socket(0); // accepts TCP, never answers the upgrade
  const ws1 = await within(h.socket(1), 2000, "a second attempt");
  assert.equal(ws0.readyState, 3, "the stuck socket was closed");
  ws1.open();
  await ws1.acceptSubscribe(CHAT);
  await within(sub, 1000, "subscribe resolving");
});

test("B4: a send never answered is sent again after sendTimeoutMs, and does not stall its chat", async () => {
  const h = new Harness();
  const c = client(h, { sendTimeoutMs: 50 });
  const out = c.send(CHAT, "hello");
  const ws = await h.socket(0);
  ws.open();
  const s1 = await ws.frame((f) => f.type === "send");
  const s2 = await within(ws.frame((f) => f.type === "send", ws.sent.indexOf(s1) + 1), 2000, "the send again");
  assert.equal(s2.client_generated_id, out.client_generated_id);
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: out.client_generated_id, id: "i", seq: 1, duplicate: false, ref: s2.ref });
  assert.equal((await out.done).seq, 1);
});

test("B5: a cached token near expiry is neither fetched in a loop nor re-sent when unchanged", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_700_000_000_000 });
  const h = new Harness();
  const token = jwt({ sub: ME, exp: Math.floor(Date.now() / 1000) + 3600 });
  let calls = 0;
  const c = client(h, {
    getToken: async () => {
      calls += 1;
      return token; // the app's cache: the same token until it is gone
    },
    pingIntervalMs: 10_000_000,
  });
  c.connect();
  await settle();
  const ws = await h.socket(0);
  ws.open();
  ws.watchers.push(() => {
    const f = ws.sent.at(-1);
    if (f.type === "auth") queueMicrotask(() => ws.push({ type: "ok", ref: f.ref }));
  });
  const start = calls;
  for (let s = 0; s < 3600 - 1; s++) {
    mock.timers.tick(1000);
    await settle();
  }
  const auths = ws.sent.filter((f) => f.type === "auth").length;
  assert.equal(auths, 0, "an unchanged token is not sent again");
  assert.ok(calls - start <= 4, `getToken called ${calls - start} times in the token's last minute`);
});

test("B5: failed reconnects do not fetch a token each time", async () => {
  const h = new Harness();
  let calls = 0;
  const c = client(h, {
    getToken: async () => {
      calls += 1;
      return jwt({ sub: ME, exp: Math.floor(Date.now() / 1000) + 3600 });
    },
  });
  c.connect();
  for (let i = 0; i < 6; i++) (await h.socket(i)).drop(1006);
  await h.socket(6);
  assert.ok(calls <= 2, `getToken called ${calls} times for 7 attempts`);
});

test("B5: getToken throwing UnauthorizedError stops the client in state unauthorized", async () => {
  const h = new Harness();
  let calls = 0;
  const c = client(h, {
    getToken: async () => {
      calls += 1;
      throw new lib.UnauthorizedError("signed out");
    },
  });
  const stopped = once(c, "state", (s) => s === "unauthorized");
  const sub = c.subscribe(CHAT);
  await within(stopped, 1000, "state unauthorized");
  await within(assert.rejects(sub, (e) => e instanceof ChatRelayError && e.code === "unauthorized"), 1000, "subscribe settling");
  assert.equal(c.connectionState, "unauthorized");
  assert.equal(calls, 1);
  assert.equal(h.sockets.length, 0);
});

test("B5: state changes carry the close code and reason", async () => {
  const h = new Harness();
  const c = client(h);
  c.subscribe(CHAT);
  const ws0 = await h.socket(0);
  ws0.open();
  await ws0.acceptSubscribe(CHAT);
  const next = new Promise((r) => c.on("state", (...args) => r(args)));
  ws0.drop(4008, "slow consumer");
  const [state, info] = await next;
  assert.equal(state, "connecting");
  assert.deepEqual(info, { code: 4008, reason: "slow consumer" });
});

test("B5: network and app-state events are injectable (React Native)", async () => {
  const h = new Harness();
  let online;
  let foreground;
  const c = client(h, {
    backoff: { initialMs: 60_000, maxMs: 60_000 },
    environment: {
      onOnline: (fn) => ((online = fn), () => {}),
      onForeground: (fn) => ((foreground = fn), () => {}),
    },
  });
  c.connect();
  (await h.socket(0)).drop(1006); // next attempt in 30-60 s
  online();
  const ws1 = await within(h.socket(1), 1000, "a reconnect when the network came back");
  ws1.drop(1006);
  foreground();
  await within(h.socket(2), 1000, "a reconnect when the app came to the foreground");
});

test("B5: resubscribe retries back off", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_700_000_000_000 });
  const h = new Harness();
  const c = client(h, { backoff: { initialMs: 100, maxMs: 100_000 }, pingIntervalMs: 10_000_000 });
  c.subscribe(CHAT);
  await settle();
  const ws = await h.socket(0);
  ws.open();
  const gaps = [];
  let from = 0;
  for (let i = 0; i < 6; i++) {
    const s = ws.sent.slice(from).find((f) => f.type === "subscribe");
    from = ws.sent.indexOf(s) + 1;
    ws.push({ type: "error", code: "unavailable", message: "try again", chat_id: CHAT, ref: s.ref });
    let waited = 0;
    while (!ws.sent.slice(from).some((f) => f.type === "subscribe")) {
      mock.timers.tick(10);
      waited += 10;
      await settle();
      assert.ok(waited < 200_000, "resubscribed at all");
    }
    gaps.push(waited);
  }
  assert.ok(gaps[5] >= 4 * gaps[0] && gaps[5] >= 1000, `delays grow: ${gaps.join(", ")}`);
});

test("B6: the user's own typing (from another tab) is not a typing event", async () => {
  const h = new Harness();
  const c = client(h);
  c.subscribe(CHAT);
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT);
  const seen = [];
  c.on("typing", (t) => seen.push(t.userId));
  const bob = once(c, "typing", (t) => t.userId === "bob");
  ws.push({ type: "typing", chat_id: CHAT, user_id: ME });
  ws.push({ type: "typing", chat_id: CHAT, user_id: "bob" });
  await bob;
  assert.deepEqual(seen, ["bob"]);
});

test("B6: subscribe after unsubscribe resolves only after the new backfill", async () => {
  const h = new Harness();
  const c = client(h);
  const got = [];
  c.on("message", (m) => got.push(m.seq));
  const first = c.subscribe(CHAT);
  first.catch(() => {});
  const ws = await h.socket(0);
  ws.open();
  const s1 = await ws.frame((f) => f.type === "subscribe");
  const p1 = await ws.frame((f) => f.type === "ping");
  c.unsubscribe(CHAT);
  const u = await ws.frame((f) => f.type === "unsubscribe");
  const second = c.subscribe(CHAT, { afterSeq: 0 });
  let settledAt = null;
  second.then(() => (settledAt = [...got]));
  const s2 = await ws.frame((f) => f.type === "subscribe", ws.sent.indexOf(s1) + 1);
  // The relay answers the first subscribe, the unsubscribe, then the second.
  ws.push({ type: "subscribed", chat_id: CHAT, latest_seq: 2, online: [], ref: s1.ref });
  ws.push({ type: "pong", ref: p1.ref });
  ws.push({ type: "unsubscribed", chat_id: CHAT, ref: u.ref });
  await settle();
  assert.equal(settledAt, null, "not settled by the first subscribe's barrier");
  const p2 = await ws.frame((f) => f.type === "ping", ws.sent.indexOf(s2));
  ws.push({ type: "subscribed", chat_id: CHAT, latest_seq: 2, online: [], ref: s2.ref });
  ws.push({ type: "message", chat_id: CHAT, seq: 1, message: row(CHAT, 1) });
  ws.push({ type: "message", chat_id: CHAT, seq: 2, message: row(CHAT, 2) });
  ws.push({ type: "pong", ref: p2.ref });
  await second;
  await settle();
  assert.deepEqual(settledAt, [1, 2]);
});

test("B6: subscribe() gives up after requestTimeoutMs", async () => {
  const h = new Harness();
  const c = client(h, { requestTimeoutMs: 50 });
  const sub = c.subscribe(CHAT);
  const ws = await h.socket(0);
  ws.open();
  await within(assert.rejects(sub, (e) => e instanceof ChatRelayError && e.code === "timeout"), 2000, "subscribe rejecting");
});

test("B6: after close(), subscribe() and send().done settle (rejected as closed)", async () => {
  const h = new Harness();
  const c = client(h);
  const queued = c.send(CHAT, "queued");
  c.close();
  const closed = (e) => e instanceof ChatRelayError && e.code === "closed";
  await within(assert.rejects(queued.done, closed), 500, "a queued send's done");
  await within(assert.rejects(c.subscribe(CHAT), closed), 500, "subscribe after close");
  await within(assert.rejects(c.send(CHAT, "late").done, closed), 500, "a send after close");
});

/** A lock manager like navigator.locks: one holder per name; the next in line gets it when the holder's promise settles. */
class FakeLocks {
  constructor() {
    this.queue = [];
  }
  request(_name, callback) {
    return new Promise((resolve) => {
      const run = () =>
        callback()
          .then(resolve)
          .finally(() => {
            this.queue.shift();
            this.queue[0]?.();
          });
      this.queue.push(run);
      if (this.queue.length === 1) run();
    });
  }
}

test("across tabs sharing a storage, the one holding the Web Lock sends what was stored; each sends its own", async () => {
  const locks = new FakeLocks();
  const storage = new MemoryStorage();
  storage.shared = "chat-relay:test"; // as IndexedDbStorage: tabs see the same entries
  const stored = { chat_id: CHAT, client_generated_id: "00000000-0000-4000-8000-0000000000cc", content: "stored", sender_id: ME, created_at: 1, order: 1 };
  await storage.put(stored);
  const [h1, h2] = [new Harness(), new Harness()];
  const tab1 = client(h1, { storage, locks });
  const tab2 = client(h2, { storage, locks });
  tab1.connect();
  tab2.connect();
  const [ws1, ws2] = [await h1.socket(0), await h2.socket(0)];
  ws1.open();
  ws2.open();
  const s1 = await ws1.frame((f) => f.type === "send");
  assert.equal(s1.client_generated_id, stored.client_generated_id, "the first tab holds the lock and sends it");
  await Promise.all([tab2.subscribe(CHAT), ws2.acceptSubscribe(CHAT)]);
  assert.deepEqual(ws2.sent.filter((f) => f.type === "send"), [], "the second does not");
  assert.deepEqual(tab2.pendingMessages(), []);
  const own = tab2.send(CHAT, "from tab 2");
  const s2 = await ws2.frame((f) => f.type === "send");
  assert.equal(s2.client_generated_id, own.client_generated_id, "its own messages it sends itself");
  ws2.push({ type: "sent", chat_id: CHAT, client_generated_id: own.client_generated_id, id: "t2", seq: 1, duplicate: false, ref: s2.ref });
  await own.done;
  // The first tab goes away before its `sent` came: the second takes over what is still stored.
  tab1.close();
  const again = await within(ws2.frame((f) => f.type === "send" && f.client_generated_id === stored.client_generated_id), 1000, "the stored message from the second tab");
  ws2.push({ type: "sent", chat_id: CHAT, client_generated_id: stored.client_generated_id, id: "s", seq: 2, duplicate: false, ref: again.ref });
  await tab2.flushed();
  assert.deepEqual(await storage.load(), []);
});

test("B5: the logger option hears state changes (debug) and listeners' exceptions (error)", async () => {
  const h = new Harness();
  const lines = [];
  const logger = { debug: (...a) => lines.push(["debug", ...a]), error: (...a) => lines.push(["error", ...a]) };
  const c = client(h, { logger });
  c.on("state", (s) => {
    if (s === "open") throw new Error("a bug in the app's listener");
  });
  c.connect();
  const ws = await h.socket(0);
  ws.open();
  assert.equal(c.connectionState, "open", "a throwing listener does not break the client");
  assert.deepEqual(
    lines.filter((l) => l[0] === "debug").map((l) => [l[1], l[2]]),
    [["chat-relay: connecting", { code: 0, reason: "connect" }], ["chat-relay: open", { code: 0, reason: "open" }]],
  );
  const errors = lines.filter((l) => l[0] === "error");
  assert.equal(errors.length, 1);
  assert.match(String(errors[0][2]), /a bug in the app's listener/);
});

test("B5: a refresh whose getToken keeps failing backs off", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_700_000_000_000 });
  const h = new Harness();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  let calls = 0;
  const c = client(h, {
    getToken: async () => {
      calls += 1;
      if (calls > 1) throw new Error("auth server down");
      return jwt({ sub: ME, exp });
    },
    backoff: { initialMs: 1000, maxMs: 60_000 },
    pingIntervalMs: 10_000_000,
  });
  c.on("error", () => {});
  c.connect();
  await settle();
  (await h.socket(0)).open();
  // The refresh is due a minute before expiry; then a minute of failures.
  mock.timers.tick((3600 - 60) * 1000);
  await settle();
  for (let s = 0; s < 60; s++) {
    mock.timers.tick(1000);
    await settle();
  }
  assert.ok(calls - 1 <= 8, `getToken failed ${calls - 1} times in a minute: retries must back off`);
});

test("uuid: a v4 uuid with crypto.randomUUID, with only getRandomValues (plain http pages), and with neither (React Native)", () => {
  const v4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const real = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  const web = globalThis.crypto;
  try {
    for (const crypto of [web, { getRandomValues: (a) => web.getRandomValues(a) }, undefined]) {
      Object.defineProperty(globalThis, "crypto", { value: crypto, configurable: true });
      const ids = Array.from({ length: 2000 }, () => lib.uuid());
      assert.ok(ids.every((u) => v4.test(u)), ids.find((u) => !v4.test(u)));
      assert.equal(new Set(ids).size, ids.length);
      assert.equal(new Set(ids.map((u) => u[0])).size, 16, "every hex digit turns up");
    }
  } finally {
    Object.defineProperty(globalThis, "crypto", real);
  }
});
