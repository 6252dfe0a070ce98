// The client against the real relay and a real PostgreSQL 15.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import { ChatRelayClient, MemoryStorage } from "../dist/index.js";
import { createChat, database, Proxy, RelayProcess, startDemo, token, until } from "./support.mjs";

let demo;
let db;

before(async () => {
  demo = await startDemo();
  db = await database(demo);
});

after(async () => {
  await db?.end();
  await demo?.stop();
});

function client(url, user, extra = {}) {
  return new ChatRelayClient({
    url,
    WebSocket,
    getToken: () => token(demo.jwt_secret, user),
    backoff: { initialMs: 50, maxMs: 500 },
    pingIntervalMs: 1000,
    pingTimeoutMs: 2000,
    ...extra,
  });
}

/** Collects the seqs of `message` events of a chat. */
function collect(c, chatId) {
  const seqs = [];
  c.on("message", (m) => {
    if (m.chat_id === chatId) seqs.push(m.seq);
  });
  return seqs;
}

async function tableSeqs(chatId) {
  const r = await db.query("SELECT seq::int AS seq FROM chat_messages WHERE chat_id = $1 ORDER BY seq", [chatId]);
  return r.rows.map((x) => x.seq);
}

test("resume after a dropped socket: what was sent meanwhile arrives, once, in order", async () => {
  const relay = await new RelayProcess(demo).start();
  const proxy = await new Proxy(relay.port).listen();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chat = await createChat(db, [alice, bob]);
  const a = client(proxy.url, alice);
  const b = client(relay.url, bob);
  const got = collect(a, chat);
  await a.subscribe(chat);
  for (let i = 0; i < 5; i++) await b.send(chat, `before ${i}`).done;
  await until(a, "message", () => got.length === 5);
  // The network goes away; bob keeps talking.
  proxy.cut();
  await until(a, "state", () => a.connectionState === "connecting");
  for (let i = 0; i < 10; i++) await b.send(chat, `meanwhile ${i}`).done;
  proxy.restore();
  await until(a, "message", () => got.length >= 15);
  // One more live message after the seam, and nothing extra.
  await b.send(chat, "after").done;
  await until(a, "message", () => got.length >= 16);
  assert.deepEqual(got, await tableSeqs(chat));
  assert.deepEqual(got, Array.from({ length: 16 }, (_, i) => i + 1));
  a.close();
  b.close();
  proxy.close();
  await relay.stop();
});

test("the outbox survives a relay restart: everything sent while it was down is stored once, in order", async () => {
  const relay = await new RelayProcess(demo).start();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chat = await createChat(db, [alice, bob]);
  const storage = new MemoryStorage();
  const a = client(relay.url, alice, { storage });
  const b = client(relay.url, bob);
  const bobGot = collect(b, chat);
  await a.subscribe(chat);
  await b.subscribe(chat);
  await a.send(chat, "first").done;
  await relay.kill();
  await until(a, "state", () => a.connectionState === "connecting");
  const outs = [];
  for (let i = 0; i < 8; i++) outs.push(a.send(chat, `while down ${i}`));
  assert.equal((await storage.load()).length, 8, "kept in the outbox");
  await relay.start(); // same port, same slot
  const stored = await Promise.all(outs.map((o) => o.done));
  await a.flushed();
  assert.equal((await storage.load()).length, 0);
  const rows = await db.query(
    "SELECT seq::int AS seq, content, client_generated_id::text AS cgid FROM chat_messages WHERE chat_id = $1 ORDER BY seq",
    [chat],
  );
  assert.deepEqual(
    rows.rows.map((r) => r.content),
    ["first", ...Array.from({ length: 8 }, (_, i) => `while down ${i}`)],
    "stored once each, in the order sent",
  );
  assert.deepEqual(stored.map((s) => s.seq), [2, 3, 4, 5, 6, 7, 8, 9]);
  await until(b, "message", () => bobGot.length >= 9);
  assert.deepEqual(bobGot, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  a.close();
  b.close();
  await relay.stop();
});

test("exactly once under retried sends: an answer lost on the way is retried with the same id", async () => {
  const relay = await new RelayProcess(demo).start();
  const proxy = await new Proxy(relay.port).listen();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chat = await createChat(db, [alice, bob]);
  const a = client(proxy.url, alice);
  const b = client(relay.url, bob);
  const bobGot = collect(b, chat);
  await b.subscribe(chat);
  a.connect();
  await until(a, "state", () => a.connectionState === "open");
  const outs = [];
  for (let round = 0; round < 5; round++) {
    // The relay stores the message, but its `sent` never reaches alice.
    proxy.mute();
    outs.push(a.send(chat, `round ${round}`));
    await until(b, "message", () => bobGot.length === round + 1);
    proxy.cut();
    proxy.restore();
    await outs[round].done;
  }
  const results = await Promise.all(outs.map((o) => o.done));
  assert.ok(results.every((r) => r.duplicate), "each was answered as a duplicate of the stored row");
  assert.deepEqual(await tableSeqs(chat), [1, 2, 3, 4, 5]);
  const again = await b.history(chat, { limit: 10 });
  assert.deepEqual(again.messages.map((m) => m.content), [0, 1, 2, 3, 4].map((i) => `round ${i}`));
  // Nothing more arrives for bob.
  await b.send(chat, "end").done;
  await until(b, "message", () => bobGot.length >= 6);
  assert.deepEqual(bobGot, [1, 2, 3, 4, 5, 6]);
  a.close();
  b.close();
  proxy.close();
  await relay.stop();
});

test("token refresh without losing events: short tokens, no close, no resubscribe", async () => {
  const relay = await new RelayProcess(demo).start();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chat = await createChat(db, [alice, bob]);
  let calls = 0;
  const a = client(relay.url, alice, {
    getToken: async () => {
      calls += 1;
      return token(demo.jwt_secret, alice, 4);
    },
  });
  const states = [];
  a.on("state", (s) => states.push(s));
  let subscribes = 0;
  a.on("subscribed", () => (subscribes += 1));
  const got = collect(a, chat);
  const b = client(relay.url, bob);
  await a.subscribe(chat);
  // About 9 s of traffic: two token lifetimes and more.
  for (let i = 0; i < 45; i++) {
    await b.send(chat, `tick ${i}`).done;
    await new Promise((r) => setTimeout(r, 200));
  }
  await until(a, "message", () => got.length >= 45);
  assert.deepEqual(got, Array.from({ length: 45 }, (_, i) => i + 1));
  assert.ok(calls >= 3, `getToken called ${calls} times`);
  assert.deepEqual(states, ["connecting", "open"], "never disconnected");
  assert.equal(subscribes, 1, "never resubscribed");
  a.close();
  b.close();
  await relay.stop();
});

test("history pages back to the first message", async () => {
  const relay = await new RelayProcess(demo).start();
  const user = randomUUID();
  const chat = await createChat(db, [user]);
  await db.query(
    "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, 'old ' || g FROM generate_series(1, 45) g",
    [chat, user],
  );
  const c = client(relay.url, user);
  const seqs = [];
  let before;
  for (;;) {
    const page = await c.history(chat, { beforeSeq: before, limit: 20 });
    seqs.unshift(...page.messages.map((m) => m.seq));
    if (!page.hasMore) break;
    before = page.messages[0].seq;
  }
  assert.deepEqual(seqs, Array.from({ length: 45 }, (_, i) => i + 1));
  c.close();
  await relay.stop();
});

test("unsubscribe, then subscribe again: the relay's answer to the unsubscribe is not taken for a removal", async () => {
  const relay = await new RelayProcess(demo).start();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chat = await createChat(db, [alice, bob]);
  const a = client(relay.url, alice);
  const b = client(relay.url, bob);
  const got = collect(a, chat);
  const removed = [];
  a.on("unsubscribed", (e) => removed.push(e));
  await a.subscribe(chat);
  a.unsubscribe(chat);
  await a.subscribe(chat);
  await b.send(chat, "still here").done;
  await until(a, "message", () => got.length === 1);
  assert.deepEqual(removed, []);
  a.close();
  b.close();
  await relay.stop();
});

test("a message over the relay's frame limit: failed once (1009), never sent again, and the chat goes on", async () => {
  const relay = await new RelayProcess(demo, { env: { CHAT_RELAY_MAX_FRAME_BYTES: "4096" } }).start();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chat = await createChat(db, [alice, bob]);
  // The client thinks the limit is the default 64 KiB: only the relay's close tells it.
  const a = client(relay.url, alice);
  const closes = [];
  a.on("state", (_s, why) => why.code === 1009 && closes.push(why));
  await a.subscribe(chat);
  const big = a.send(chat, "x".repeat(10_000));
  await assert.rejects(big.done, (e) => e.code === "too_large");
  assert.deepEqual(a.pendingMessages(chat).map((p) => p.status), ["failed"]);
  await a.send(chat, "after").done;
  assert.deepEqual((await db.query("SELECT content FROM chat_messages WHERE chat_id = $1", [chat])).rows, [{ content: "after" }]);
  assert.equal(closes.length, 1, "one close, no loop");
  await a.discard(big.client_generated_id);
  assert.deepEqual(a.pendingMessages(chat), []);
  a.close();
  await relay.stop();
});

/** Resolves with the store's snapshot once `pred` holds for it; fails after `ms` with `what` and the last snapshot. */
function storeUntil(store, what, pred, ms = 10_000) {
  return new Promise((resolve, reject) => {
    let off = () => {};
    const timer = setTimeout(() => (off(), reject(new Error(`${what}: not within ${ms} ms; last: ${JSON.stringify(store.getSnapshot())}`))), ms);
    const check = () => {
      const s = store.getSnapshot();
      if (!pred(s)) return;
      clearTimeout(timer);
      queueMicrotask(() => off());
      resolve(s);
    };
    off = store.subscribe(check);
    check();
  });
}

test("the inbox store against the relay (protocol 1.2): the list in order, a message moves its chat to the top with a badge, a read on another device clears it", async () => {
  const relay = await new RelayProcess(demo).start();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const older = await createChat(db, [alice, bob]);
  const newer = await createChat(db, [alice, bob]);
  await db.query("UPDATE chats SET created_at = now() - interval '1 hour' WHERE id = $1", [older]);
  const phone = client(relay.url, alice);
  const laptop = client(relay.url, alice);
  const b = client(relay.url, bob);
  const inbox = phone.inbox();
  const ids = (s) => s.chats.map((c) => c.chat_id);
  const first = await storeUntil(inbox, "the first page", (s) => !s.loading && (s.error || s.chats.length === 2));
  assert.equal(first.error, null);
  assert.deepEqual(ids(first), [newer, older], "by last activity (the chats' creation: no messages yet)");
  assert.equal(first.unreadChats, 0);

  const sent = await b.send(older, "up you go").done;
  const moved = await storeUntil(inbox, "the older chat on top, unread", (s) => s.chats[0]?.chat_id === older && s.chats[0].unread === 1);
  assert.deepEqual(ids(moved), [older, newer]);
  assert.equal(moved.unreadChats, 1);
  assert.equal(moved.chats[0].last_message?.content, "up you go");

  // Read on the laptop (another connection of alice's): the phone's badge clears.
  laptop.connect();
  await until(laptop, "state", () => laptop.connectionState === "open");
  laptop.markRead(older, sent.seq);
  const read = await storeUntil(inbox, "read elsewhere", (s) => s.chats[0]?.unread === 0 && s.unreadChats === 0);
  assert.equal(read.chats[0].read_seq, sent.seq);
  assert.equal(phone.connectionState, "open");
  for (const c of [phone, laptop, b]) c.close();
  await relay.stop();
});

test("beyond the relay's request rate: subscribes and history pages refused with rate_limited are asked again after retry_after_ms, and all succeed", async () => {
  const relay = await new RelayProcess(demo, { env: { CHAT_RELAY_REQUEST_RATE: "5" } }).start();
  const [alice, bob] = [randomUUID(), randomUUID()];
  const chats = [];
  for (let i = 0; i < 8; i++) chats.push(await createChat(db, [alice, bob]));
  for (const chat of chats) await db.query("INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, $2, 'one')", [chat, bob]);
  const a = client(relay.url, alice);
  const errors = [];
  a.on("error", (e) => errors.push(e));
  a.connect();
  await until(a, "state", () => a.connectionState === "open");
  const started = Date.now();
  const subs = await Promise.all(chats.map((chat) => a.subscribe(chat)));
  const pages = await Promise.all(chats.map((chat) => a.history(chat, { limit: 10 })));
  assert.equal(subs.length, 8);
  assert.deepEqual(
    pages.map((p) => p.messages.map((m) => m.content)),
    chats.map(() => ["one"]),
  );
  // 16 requests at 5 a second, bursts of 5: at least two seconds of waiting were asked for.
  assert.ok(Date.now() - started >= 1500, `took ${Date.now() - started} ms: the rate was not in force`);
  assert.deepEqual(errors.map((e) => e.code), [], "refusals are handled, not surfaced as errors");
  a.close();
  await relay.stop();
});
