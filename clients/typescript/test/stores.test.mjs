// The chat and inbox stores (client.chat(), client.inbox()) against the
// scripted relay of test/fake.mjs, which also speaks protocol 1.2's inbox.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { ChatRelayClient, MemoryStorage } from "../dist/index.js";
import { FakeInbox, Harness, jwt, row, settle, summary, within } from "./fake.mjs";

const ME = "11111111-1111-4111-8111-111111111111";
const BOB = "b0000000-0000-4000-8000-00000000000b";
const CHAT = "c0000000-0000-4000-8000-000000000001";

const live = [];
afterEach(() => {
  for (const c of live.splice(0)) c.close();
});

function client(h, extra = {}) {
  const c = new ChatRelayClient({
    url: "ws://relay.test/v1/ws",
    WebSocket: h.WebSocket,
    getToken: async () => jwt({ sub: ME, exp: Math.floor(Date.now() / 1000) + 3600 }),
    backoff: { initialMs: 10, maxMs: 40 },
    ...extra,
  });
  live.push(c);
  return c;
}

/** Resolves with the store's snapshot once `pred` holds for it (checked on every change). */
function until(store, pred, what = "the store to change", ms = 2000) {
  let off;
  const p = new Promise((resolve) => {
    const check = () => {
      const s = store.getSnapshot();
      if (pred(s)) {
        queueMicrotask(() => off?.());
        resolve(s);
        return true;
      }
      return false;
    };
    off = store.subscribe(check);
    check();
  });
  return within(p, ms, what);
}

const seqs = (s) => s.items.map((i) => i.seq);

/** Opens socket `i` and answers the chat's subscribe and first history page. */
async function open(h, i, { latest = 0, page = [], hasMore = false } = {}) {
  const ws = await h.socket(i);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest });
  if (latest > 0 || page.length) {
    const q = await ws.frame((f) => f.type === "history");
    ws.push({ type: "history", chat_id: CHAT, messages: page, has_more: hasMore, ref: q.ref });
  }
  return ws;
}

test("chat store: subscribes with its first listener, newest page once live, live after it, older on demand, unsubscribes with the last", async () => {
  const h = new Harness();
  const c = client(h);
  const store = c.chat(CHAT);
  assert.equal(c.chat(CHAT), store, "one store per chat");
  assert.deepEqual(store.getSnapshot().items, []);
  let calls = 0;
  const unsubscribe = store.subscribe(() => calls++);
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest: 40 });
  const q = await ws.frame((f) => f.type === "history");
  assert.equal(q.before_seq, 41, "the page ends where the subscription began: no gap, no overlap");
  ws.push({ type: "history", chat_id: CHAT, messages: Array.from({ length: 30 }, (_, i) => row(CHAT, 11 + i)), has_more: true, ref: q.ref });
  let s = await until(store, (s) => s.items.length === 30 && !s.loading);
  assert.equal(s.live, true);
  assert.equal(s.hasMore, true);
  assert.equal(store.getSnapshot(), store.getSnapshot(), "the same snapshot while nothing changes");
  assert.ok(Object.isFrozen(s) && Object.isFrozen(s.items));
  ws.push({ type: "message", chat_id: CHAT, seq: 41, message: row(CHAT, 41) });
  s = await until(store, (s) => s.items.length === 31);
  assert.deepEqual(seqs(s).slice(-2), [40, 41]);
  const older = store.loadOlder();
  const q2 = await ws.frame((f) => f.type === "history" && f !== q);
  assert.equal(q2.before_seq, 11);
  ws.push({ type: "history", chat_id: CHAT, messages: Array.from({ length: 10 }, (_, i) => row(CHAT, 1 + i)), has_more: false, ref: q2.ref });
  await older;
  s = store.getSnapshot();
  assert.deepEqual(seqs(s), Array.from({ length: 41 }, (_, i) => i + 1));
  assert.equal(s.hasMore, false);
  assert.ok(calls > 0);
  unsubscribe();
  await settle();
  assert.ok(ws.sent.some((f) => f.type === "unsubscribe" && f.chat_id === CHAT), "unsubscribed with the last listener");
});

test("chat store: a listener that leaves and comes back in the same tick (StrictMode) does not resubscribe", async () => {
  const h = new Harness();
  const c = client(h);
  const store = c.chat(CHAT);
  const off1 = store.subscribe(() => {});
  const ws = await open(h, 0);
  await until(store, (s) => s.live);
  off1();
  const off2 = store.subscribe(() => {});
  await settle();
  assert.equal(ws.sent.filter((f) => f.type === "unsubscribe").length, 0);
  assert.equal(ws.sent.filter((f) => f.type === "subscribe").length, 1);
  off2();
});

test("chat store: own messages go pending → sent → delivered → read in place; failed ones stay, and retry", async () => {
  const h = new Harness();
  const c = client(h);
  const store = c.chat(CHAT);
  store.subscribe(() => {});
  const ws = await open(h, 0, { latest: 1, page: [row(CHAT, 1)] });
  await until(store, (s) => s.items.length === 1);
  const done = store.send("hello");
  let s = await until(store, (s) => s.items.length === 2);
  const key = s.items[1].key;
  assert.deepEqual([s.items[1].status, s.items[1].mine, s.items[1].content], ["pending", true, "hello"]);
  const f = await ws.frame((f) => f.type === "send");
  assert.equal(f.client_generated_id, key);
  ws.push({ type: "sent", chat_id: CHAT, client_generated_id: key, id: "m2", seq: 2, duplicate: false, ref: f.ref });
  await done;
  s = await until(store, (s) => s.items[1]?.status === "sent");
  assert.deepEqual([s.items.length, s.items[1].key, s.items[1].seq], [2, key, 2], "still one line, now with its seq");
  const echo = row(CHAT, 2, { id: "m2", sender_id: ME, client_generated_id: key, content: "hello" });
  ws.push({ type: "message", chat_id: CHAT, seq: 2, message: echo });
  s = await until(store, (s) => s.items[1]?.row !== undefined);
  assert.deepEqual([s.items.length, s.items[1].key, s.items[1].status], [2, key, "sent"]);
  ws.push({ type: "update", chat_id: CHAT, seq: 2, message: { ...echo, status: "delivered" } });
  await until(store, (s) => s.items[1].status === "delivered", "delivered");
  ws.push({ type: "receipt", chat_id: CHAT, user_id: BOB, delivered_seq: 2, read_seq: 2 });
  await until(store, (s) => s.items[1].status === "read", "read, from bob's receipt");
  // A refused message stays in the list as failed, and comes back with retry.
  store.send("not allowed");
  const g = await ws.frame((f) => f.type === "send" && f.content === "not allowed");
  ws.push({ type: "error", code: "forbidden", message: "no", chat_id: CHAT, ref: g.ref });
  s = await until(store, (s) => s.items[2]?.status === "failed");
  assert.equal(s.items[2].error, "forbidden");
  store.retry(s.items[2].key);
  await until(store, (s) => s.items[2]?.status === "pending");
  await ws.frame((f) => f.type === "send" && f.content === "not allowed" && f !== g);
});

test("chat store: who is typing, expiring; who is online", async () => {
  const h = new Harness();
  const c = client(h);
  const store = c.chat(CHAT, { typingMs: 40 });
  store.subscribe(() => {});
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { online: [ME, BOB] });
  let s = await until(store, (s) => s.live);
  assert.deepEqual([...s.online].sort(), [ME, BOB].sort());
  ws.push({ type: "typing", chat_id: CHAT, user_id: BOB });
  s = await until(store, (s) => s.typing.length === 1);
  assert.deepEqual(s.typing, [BOB]);
  await until(store, (s) => s.typing.length === 0, "typing to expire");
  ws.push({ type: "typing", chat_id: CHAT, user_id: BOB });
  await until(store, (s) => s.typing.length === 1);
  ws.push({ type: "message", chat_id: CHAT, seq: 1, message: row(CHAT, 1, { sender_id: BOB }) });
  s = await until(store, (s) => s.items.length === 1);
  assert.deepEqual(s.typing, [], "their message ends their typing");
  ws.push({ type: "presence", chat_id: CHAT, user_id: BOB, online: false });
  s = await until(store, (s) => s.online.length === 1);
  assert.deepEqual(s.online, [ME]);
});

test("chat store: reads only while visible, one read for a burst, on becoming visible too", async () => {
  const h = new Harness();
  const c = client(h);
  const store = c.chat(CHAT);
  store.subscribe(() => {});
  const ws = await open(h, 0, { latest: 3, page: [row(CHAT, 1), row(CHAT, 2), row(CHAT, 3)] });
  await until(store, (s) => s.items.length === 3);
  for (let seq = 4; seq <= 8; seq++) ws.push({ type: "message", chat_id: CHAT, seq, message: row(CHAT, seq) });
  await until(store, (s) => s.items.length === 8);
  await new Promise((r) => setTimeout(r, 150)); // longer than the read debounce: nothing may come
  assert.equal(ws.sent.filter((f) => f.type === "read").length, 0, "hidden: nothing read");
  store.setVisible(true);
  assert.deepEqual(await ws.frame((f) => f.type === "read"), { type: "read", chat_id: CHAT, seq: 8 });
  for (let seq = 9; seq <= 20; seq++) ws.push({ type: "message", chat_id: CHAT, seq, message: row(CHAT, seq) });
  const second = await ws.frame((f) => f.type === "read" && f.seq > 8);
  assert.equal(second.seq, 20, "one read for the burst");
  assert.equal(ws.sent.filter((f) => f.type === "read").length, 2);
});

test("chat store: a chat opened while visible is read up to its newest page (no new message needed)", async () => {
  const h = new Harness();
  const c = client(h);
  const store = c.chat(CHAT);
  store.subscribe(() => {});
  store.setVisible(true); // shown as it opens: what a conversation screen does
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest: 3 });
  const q = await ws.frame((f) => f.type === "history");
  await new Promise((r) => setTimeout(r, 150)); // a relay slower to answer than the read debounce
  ws.push({ type: "history", chat_id: CHAT, messages: [row(CHAT, 1), row(CHAT, 2), row(CHAT, 3)], has_more: false, ref: q.ref });
  await until(store, (s) => s.items.length === 3);
  const read = await within(ws.frame((f) => f.type === "read"), 2000, "a read for the first page");
  assert.deepEqual(read, { type: "read", chat_id: CHAT, seq: 3 });
});

test("chat store: a history page that times out leaves it not loading, with the error; loadOlder tries again", async () => {
  const h = new Harness();
  const c = client(h, { requestTimeoutMs: 50 });
  const store = c.chat(CHAT);
  store.subscribe(() => {});
  const ws = await h.socket(0);
  ws.open();
  await ws.acceptSubscribe(CHAT, { latest: 5 });
  const lost = await ws.frame((f) => f.type === "history"); // never answered
  let s = await until(store, (s) => s.error !== null);
  assert.equal(s.error.code, "timeout");
  assert.equal(s.loading, false);
  assert.equal(s.live, true, "live anyway: new messages still show");
  const again = store.loadOlder();
  const q = await ws.frame((f) => f.type === "history" && f !== lost);
  ws.push({ type: "history", chat_id: CHAT, messages: [row(CHAT, 4), row(CHAT, 5)], has_more: true, ref: q.ref });
  await again;
  s = store.getSnapshot();
  assert.deepEqual(seqs(s), [4, 5]);
  assert.equal(s.error, null);
});

test("chat store: the window is saved; a cold start shows it at once and resumes with after_seq", async () => {
  const storage = new MemoryStorage();
  const h1 = new Harness();
  const c1 = client(h1, { storage });
  const first = c1.chat(CHAT);
  const off = first.subscribe(() => {});
  await open(h1, 0, { latest: 3, page: [row(CHAT, 1), row(CHAT, 2), row(CHAT, 3)] });
  await until(first, (s) => s.items.length === 3);
  off();
  await settle();
  c1.close();
  // Cold start: the saved window renders before the relay answers anything.
  const h2 = new Harness();
  const c2 = client(h2, { storage });
  const store = c2.chat(CHAT);
  store.subscribe(() => {});
  const s = await until(store, (s) => s.items.length === 3);
  assert.equal(s.live, false);
  const ws = await h2.socket(0);
  ws.open();
  const sub = await ws.acceptSubscribe(CHAT, { latest: 4, backlog: [row(CHAT, 4)] });
  assert.equal(sub.after_seq, 3);
  await until(store, (s) => s.live && s.items.length === 4);
  assert.equal(ws.sent.filter((f) => f.type === "history").length, 0, "no history needed");
});

test("chat store: saved windows are per user (the token's sub): another user on the same storage sees none of them", async () => {
  const storage = new MemoryStorage();
  const as = (sub) => ({ storage, getToken: async () => jwt({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }) });
  const h1 = new Harness();
  const c1 = client(h1, as(ME));
  const first = c1.chat(CHAT);
  const off = first.subscribe(() => {});
  await open(h1, 0, { latest: 3, page: [row(CHAT, 1), row(CHAT, 2), row(CHAT, 3, { content: "for me only" })] });
  await until(first, (s) => s.items.length === 3);
  off();
  await settle();
  c1.close();
  // Bob signs in on the same device (same storage): no window of mine, no resume from my cursor.
  const h2 = new Harness();
  const c2 = client(h2, as(BOB));
  const store = c2.chat(CHAT);
  const offBob = store.subscribe(() => {});
  const ws = await h2.socket(0);
  ws.open();
  const sub = await ws.acceptSubscribe(CHAT, { latest: 3 });
  assert.equal(sub.after_seq, undefined, "not resumed from another user's cursor");
  assert.deepEqual(store.getSnapshot().items, [], "another user's saved window is not shown");
  const q = await ws.frame((f) => f.type === "history");
  ws.push({ type: "history", chat_id: CHAT, messages: [row(CHAT, 2), row(CHAT, 3, { content: "as bob sees it" })], has_more: true, ref: q.ref });
  await until(store, (s) => s.items.length === 2 && !s.loading);
  assert.ok(!store.getSnapshot().items.some((i) => i.content === "for me only"));
  offBob(); // saves Bob's window
  await settle();
  c2.close();
  // Back as me: my window is still mine, and shows before the relay answers.
  const h3 = new Harness();
  const c3 = client(h3, as(ME));
  const mine = c3.chat(CHAT);
  mine.subscribe(() => {});
  const s = await until(mine, (s) => s.items.length === 3);
  assert.equal(s.items.at(-1).content, "for me only");
});

test("chat store: a window in memory is never saved as the next user's (signed out, someone else signs in on the same client)", async () => {
  const storage = new MemoryStorage();
  let user = ME;
  const token = async () => jwt({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 });
  const h = new Harness();
  const c = client(h, { storage, getToken: token });
  const store = c.chat(CHAT);
  const off = store.subscribe(() => {});
  const ws0 = await open(h, 0, { latest: 3, page: [row(CHAT, 1), row(CHAT, 2), row(CHAT, 3, { content: "for me only" })] });
  await until(store, (s) => s.items.length === 3);
  const saved = async () => {
    while (!(await storage.loadChat(`${ME}/${CHAT}`))) await new Promise((r) => setTimeout(r, 20));
  };
  await within(saved(), 2000, "my window saved"); // (debounced)
  ws0.drop(4001);
  user = BOB;
  const ws1 = await h.socket(1);
  ws1.open();
  await ws1.frame((f) => f.type === "subscribe");
  ws1.push({ type: "message", chat_id: CHAT, seq: 4, message: row(CHAT, 4) });
  await until(store, (s) => s.items.length === 4);
  off(); // the store saves what it holds
  await settle();
  c.close();
  assert.equal(await storage.loadChat(`${BOB}/${CHAT}`), null, "nothing saved under bob's name");
  const mine = await storage.loadChat(`${ME}/${CHAT}`);
  assert.deepEqual(mine.messages.map((m) => m.seq), [1, 2, 3], "mine as I left it: nothing that came on bob's connection");
});

test("inbox store: first page sorted, the badge, loadMore, live chat and chat_removed, first page again after a reconnect, off when unlistened", async () => {
  const h = new Harness();
  const c = client(h);
  const chats = [
    summary("chat-a", { seq: 3, at: "2026-01-01T10:00:00Z", unread: 1 }),
    summary("chat-b", { seq: 5, at: "2026-01-01T12:00:00Z" }),
    summary("chat-c", { seq: 1, at: "2026-01-01T12:00:00Z", unread: 2 }),
    summary("chat-d", { seq: 9, at: "2026-01-01T08:00:00Z" }),
  ];
  const inbox = c.inbox();
  const off = inbox.subscribe(() => {});
  const ws = await h.socket(0);
  const fake = new FakeInbox(ws, chats);
  ws.open();
  const ids = (s) => s.chats.map((x) => x.chat_id);
  // Smaller pages than the list: loadMore follows `next`.
  let s = await until(inbox, (s) => s.chats.length > 0 && !s.loading);
  assert.deepEqual(ids(s), ["chat-b", "chat-c", "chat-a", "chat-d"].slice(0, s.chats.length));
  assert.equal(s.unreadChats, 2);
  while (inbox.getSnapshot().hasMore) await inbox.loadMore();
  s = inbox.getSnapshot();
  assert.deepEqual(ids(s), ["chat-b", "chat-c", "chat-a", "chat-d"], "last_activity desc, then chat_id");
  // Live: a new message moves chat-d to the top; chat-c is read; chat-b goes.
  fake.change(summary("chat-d", { seq: 10, at: "2026-01-01T13:00:00Z", unread: 1 }));
  fake.change(summary("chat-c", { seq: 1, at: "2026-01-01T12:00:00Z", unread: 0 }));
  fake.remove("chat-b");
  s = await until(inbox, (s) => s.chats.length === 3);
  assert.deepEqual(ids(s), ["chat-d", "chat-c", "chat-a"]);
  assert.equal(s.unreadChats, 2);
  // Reconnect: the first page is asked again and is the truth.
  fake.chats.push(summary("chat-e", { seq: 1, at: "2026-01-02T00:00:00Z", unread: 1 }));
  ws.drop(1006);
  const ws1 = await h.socket(1);
  const fake1 = new FakeInbox(ws1, fake.chats);
  ws1.open();
  s = await until(inbox, (s) => s.chats[0]?.chat_id === "chat-e" && !s.loading);
  assert.deepEqual(ids(s), ["chat-e", "chat-d", "chat-c", "chat-a"]);
  assert.equal(s.unreadChats, 3);
  assert.equal(fake1.asked.length, 1);
  assert.equal(fake1.asked[0].before, undefined);
  off();
  await settle();
  assert.ok(ws1.sent.some((f) => f.type === "inbox_off"), "inbox_off with the last listener");
});

test("inbox store: pages follow the next cursor", async () => {
  const h = new Harness();
  const c = client(h);
  const chats = Array.from({ length: 5 }, (_, i) => summary(`chat-${i}`, { seq: i, at: `2026-01-0${i + 1}T00:00:00Z` }));
  const { InboxStore } = await import("../dist/index.js");
  const inbox = new InboxStore(c, 2);
  inbox.subscribe(() => {});
  const ws = await h.socket(0);
  const fake = new FakeInbox(ws, chats);
  ws.open();
  await until(inbox, (s) => s.chats.length === 2 && !s.loading);
  assert.equal(inbox.getSnapshot().hasMore, true);
  await inbox.loadMore();
  await inbox.loadMore();
  const s = inbox.getSnapshot();
  assert.deepEqual(s.chats.map((x) => x.chat_id), ["chat-4", "chat-3", "chat-2", "chat-1", "chat-0"]);
  assert.equal(s.hasMore, false);
  assert.deepEqual(fake.asked.map((f) => [f.limit, f.before ?? null]), [[2, null], [2, "p:2"], [2, "p:4"]]);
});
