// The browser chat of `chat-relay demo` (demo/app.jsx on @chat-relay/react),
// in a real Chromium (Debian's package, driven by playwright-core; set
// CHROMIUM to use another binary), against the real relay. Every wait is for
// a condition on the page; one that times out says what the page's panes
// held (inbox rows, badges, connection, messages, outbox).
// UPDATE_SCREENSHOT=1 writes docs/images/browser-chat.png.
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { startDemo } from "./support.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT_MS = 20_000;

let demo;
let browser;

before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM`);
  demo = await startDemo();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

const pane = (id) => `section.pane[data-pane="${id}"]`;
const conv = (id) => `${pane(id)} .conversation`;

/** A fresh page (its own storage) on the demo, with `query`; page errors are collected. */
async function open(t, query = "", viewport = { width: 1400, height: 900 }) {
  const ctx = await browser.newContext({ viewport });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(String(e)));
  await page.goto(`${demo.web_url}${query}`);
  return page;
}

/**
 * Waits until `fn(arg)` holds in the page; on timeout fails with `what` and
 * the state of every pane.
 */
async function until(page, what, fn, arg, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    throw new Error(`waited ${timeout} ms for: ${what}\n${e.message.split("\n")[0]}\npage state:\n${await explain(page)}`);
  }
}

/** Waits until `selector` matches something. */
function shows(page, selector, what = selector) {
  return until(page, what, (sel) => document.querySelector(sel) !== null, selector);
}

/** Waits until a pane's conversation holds a message with `text`. */
function has(page, id, text) {
  return until(
    page,
    `${id} shows "${text}"`,
    ([sel, text]) => [...document.querySelectorAll(sel)].some((e) => e.textContent === text),
    [`${conv(id)} .msg .text`, text],
  );
}

/** Waits until a pane's conversation list reads `rows` from the top: [chat key, unread] pairs (and the total badge, if given). */
function listIs(page, id, rows, total) {
  const want = rows.map(([key, unread]) => `${key}/${unread}`).join(" ");
  return until(
    page,
    `${id}'s list: ${want}${total === undefined ? "" : `, total badge ${total}`}`,
    ([sel, want, total]) => {
      const p = document.querySelector(sel);
      if (!p) return false;
      const got = [...p.querySelectorAll(".inbox .row")].map((r) => `${r.dataset.chat}/${r.dataset.unread}`).join(" ");
      return got.startsWith(want) && (total === null || p.querySelector("header").dataset.unreadChats === String(total));
    },
    [pane(id), want, total ?? null],
  );
}

/** Waits until a pane's own message `text` has `status`. */
function ticked(page, id, text, status) {
  return until(
    page,
    `${id}'s "${text}" ${status}`,
    ([sel, text, status]) => [...document.querySelectorAll(sel)].some((e) => e.querySelector(".text")?.textContent === text && e.dataset.status === status),
    [`${conv(id)} .msg.mine`, text, status],
  );
}

const texts = (page, id) => page.locator(`${conv(id)} .msg .text`).allTextContents();

async function say(page, id, text) {
  await page.fill(`${conv(id)} input.text`, text);
  await page.press(`${conv(id)} input.text`, "Enter");
}

/** What the page's panes hold, for a failure's message. */
function explain(page) {
  return page
    .evaluate(() => {
      const out = {};
      const names = Object.fromEntries((window.demo?.config.users ?? []).map((u) => [u.id, u.name]));
      for (const [id, c] of Object.entries(window.demo?.clients ?? {})) {
        const p = document.querySelector(`section.pane[data-pane="${id}"]`);
        const cv = p?.querySelector(".conversation");
        out[id] = {
          state: c.connectionState,
          user: names[c.userId] ?? c.userId,
          badge: p?.querySelector("header")?.dataset.unreadChats,
          inbox: [...(p?.querySelectorAll(".inbox .row") ?? [])].map((r) => `${r.dataset.chat}/${r.dataset.unread}`).join(" "),
          inboxError: c.inbox().getSnapshot().error?.message ?? null,
          open: cv ? `${cv.dataset.chat} live=${cv.dataset.live} peerOnline=${cv.dataset.peerOnline}` : null,
          last: [...(cv?.querySelectorAll(".msg") ?? [])].slice(-3).map((e) => `${e.querySelector(".text")?.textContent}|${e.dataset.status}`),
          pending: c.pendingMessages().map((m) => [m.content, m.status]),
        };
      }
      return JSON.stringify(out, null, 1);
    })
    .catch((e) => `(could not read the page: ${e.message})`);
}

/** Routes the page's relay sockets through the test: `drop(frame, sub)` true swallows a client frame; `seen` has them all. */
async function tapSockets(page, drop = () => false) {
  const seen = [];
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    const token = new URL(ws.url()).searchParams.get("access_token") ?? "";
    const sub = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString() || "{}").sub;
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      const f = JSON.parse(String(m));
      seen.push({ sub, ...f });
      if (!drop(f, sub)) server.send(m);
    });
    server.onMessage((m) => ws.send(m));
  });
  return seen;
}

/** Makes the page hidden or visible, as a switched-away tab or a locked phone would be. */
function setVisible(page, visible) {
  return page.evaluate((v) => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (v ? "visible" : "hidden") });
    document.dispatchEvent(new Event("visibilitychange"));
  }, visible);
}

test("the inbox: a message moves its chat to the top of the others' lists with a badge; a read on alice's laptop clears her phone's badge", async (t) => {
  const page = await open(t);
  for (const id of ["alice-laptop", "bob", "carol"]) await shows(page, `${conv(id)}[data-live="true"]`, `${id}'s conversation live`);
  // As seeded: alice has one unread message, from carol; the lists are by last activity.
  await listIs(page, "alice-phone", [["alice-carol", 1], ["group", 0], ["alice-bob", 0]], 1);
  await listIs(page, "alice-laptop", [["alice-carol", 1], ["group", 0], ["alice-bob", 0]], 1);
  await listIs(page, "bob", [["group", 0], ["bob-carol", 0], ["alice-bob", 0]], 0);
  await listIs(page, "carol", [["alice-carol", 0], ["group", 0], ["bob-carol", 0]], 0);

  // Carol writes in the group (her open chat): it goes to the top of every
  // list, unread for alice (both devices) and bob, not for carol.
  await say(page, "carol", "who's driving on Saturday?");
  await listIs(page, "alice-phone", [["group", 1], ["alice-carol", 1], ["alice-bob", 0]], 2);
  await listIs(page, "alice-laptop", [["group", 1], ["alice-carol", 1], ["alice-bob", 0]], 2);
  await listIs(page, "bob", [["group", 1], ["bob-carol", 0], ["alice-bob", 0]], 1);
  await listIs(page, "carol", [["group", 0], ["alice-carol", 0], ["bob-carol", 0]], 0);
  const preview = await page.locator(`${pane("alice-phone")} .row[data-chat="group"] .preview`).textContent();
  assert.equal(preview, "carol: who's driving on Saturday?");
  const shot = process.env.UPDATE_SCREENSHOT
    ? path.resolve(here, "../../../docs/images/browser-chat.png")
    : path.join(os.tmpdir(), "chat-relay-browser-chat.png");
  mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot });

  // Alice opens it on her laptop: read there, so her phone's badge goes too.
  await page.click(`${pane("alice-laptop")} .row[data-chat="group"]`);
  await has(page, "alice-laptop", "who's driving on Saturday?");
  await listIs(page, "alice-phone", [["group", 0], ["alice-carol", 1], ["alice-bob", 0]], 1);
  await listIs(page, "alice-laptop", [["group", 0], ["alice-carol", 1], ["alice-bob", 0]], 1);
  // Bob has not read it.
  await listIs(page, "bob", [["group", 1]], 1);

  // And the other way: her phone opens carol's question (the list gives way
  // to the conversation), and the laptop's badge clears.
  await page.click(`${pane("alice-phone")} .row[data-chat="alice-carol"]`);
  await has(page, "alice-phone", "are you coming to the talk tonight?");
  assert.equal(await page.locator(`${pane("alice-phone")} .inbox`).isVisible(), false, "the phone shows one screen at a time");
  await listIs(page, "alice-laptop", [["group", 0], ["alice-carol", 0], ["alice-bob", 0]], 0);
  await say(page, "alice-phone", "yes, see you there");
  await page.click(`${conv("alice-phone")} .back`);
  await listIs(page, "alice-phone", [["alice-carol", 0], ["group", 0], ["alice-bob", 0]], 0);
  // Carol has the group open, not this chat: unread for her, on top.
  await listIs(page, "carol", [["alice-carol", 1], ["group", 0], ["bob-carol", 0]], 1);

  // Carol switches to bob's chat and writes: it climbs from second to first in bob's list.
  await page.click(`${pane("carol")} .row[data-chat="bob-carol"]`);
  await shows(page, `${conv("carol")}[data-chat="bob-carol"][data-live="true"]`, "carol's chat with bob live");
  await say(page, "carol", "coffee tomorrow?");
  await listIs(page, "bob", [["bob-carol", 1], ["group", 1], ["alice-bob", 0]], 2);
  await listIs(page, "carol", [["bob-carol", 0], ["alice-carol", 1], ["group", 0]], 1);
  assert.deepEqual(page.problems, []);
});

test("two people chat: ticks, presence, typing, history, an offline switch, a reload", async (t) => {
  const page = await open(t, "?panes=alice-laptop,bob", { width: 1100, height: 640 });
  await shows(page, `${conv("alice-laptop")}[data-live="true"]`);
  await shows(page, `${conv("bob")}[data-live="true"]`);

  // History: the newest 20 of the 60 earlier messages, then older on scroll.
  assert.equal(await page.locator(`${conv("alice-laptop")} .msg`).count(), 20);
  await page.locator(`${conv("alice-laptop")} .list`).evaluate((el) => (el.scrollTop = 0));
  await until(page, "40 messages after a scroll up", (sel) => document.querySelectorAll(sel).length >= 40, `${conv("alice-laptop")} .msg`);
  const alice = await texts(page, "alice-laptop");
  assert.equal(alice[0], "earlier message #21");
  assert.equal(alice.at(-1), "earlier message #60");

  // Presence: each sees the other online.
  await shows(page, `${conv("alice-laptop")}[data-peer-online="true"]`);
  await shows(page, `${conv("bob")}[data-peer-online="true"]`);

  // Alice writes; Bob reads it (his pane is visible), so it turns "read".
  await say(page, "alice-laptop", "hi bob");
  await has(page, "bob", "hi bob");
  await shows(page, `${conv("alice-laptop")} .msg.mine[data-status="read"]`);

  // Typing shows on the other side only.
  await page.type(`${conv("bob")} input.text`, "hey");
  await until(page, "alice sees bob typing", (sel) => document.querySelector(sel)?.textContent.includes("bob is typing"), `${conv("alice-laptop")} .typing`);
  assert.equal(await page.locator(`${conv("bob")} .typing`).textContent(), "");
  await page.press(`${conv("bob")} input.text`, "Enter");
  await has(page, "alice-laptop", "hey");

  // Offline: Alice's sends wait in her outbox, shown as pending...
  await page.uncheck(`${pane("alice-laptop")} input.online`);
  await shows(page, `${pane("alice-laptop")} .state[data-state="offline"]`);
  for (const text of ["sent while offline 1", "sent while offline 2"]) await say(page, "alice-laptop", text);
  await until(page, "two pending", (sel) => document.querySelectorAll(sel).length === 2, `${conv("alice-laptop")} .msg.pending`);
  // ... Bob sees her go offline, and nothing of them.
  await shows(page, `${conv("bob")}[data-peer-online="false"]`);
  assert.ok(!(await texts(page, "bob")).some((t) => t.startsWith("sent while offline")));

  // Back online: they flush, in order, once.
  await page.check(`${pane("alice-laptop")} input.online`);
  await until(
    page,
    "bob has both offline messages",
    (sel) => [...document.querySelectorAll(sel)].filter((e) => e.textContent.startsWith("sent while offline")).length === 2,
    `${conv("bob")} .msg .text`,
  );
  await until(page, "nothing pending", (sel) => document.querySelectorAll(sel).length === 0, `${conv("alice-laptop")} .msg.pending`);
  assert.deepEqual((await texts(page, "bob")).slice(-3), ["hey", "sent while offline 1", "sent while offline 2"]);

  // A reload while offline: the outbox is in IndexedDB and goes out after it.
  await page.uncheck(`${pane("alice-laptop")} input.online`);
  await shows(page, `${pane("alice-laptop")} .state[data-state="offline"]`);
  await say(page, "alice-laptop", "survives a reload");
  await until(page, "one pending", (sel) => document.querySelectorAll(sel).length === 1, `${conv("alice-laptop")} .msg.pending`);
  await page.reload();
  await shows(page, `${conv("bob")}[data-live="true"]`);
  await has(page, "bob", "survives a reload");
  await shows(page, `${conv("alice-laptop")}[data-live="true"]`);
  await until(page, "nothing pending after the reload", (sel) => document.querySelectorAll(sel).length === 0, `${conv("alice-laptop")} .msg.pending`);
  const once = (await texts(page, "bob")).filter((t) => t === "survives a reload");
  assert.equal(once.length, 1);
  assert.deepEqual(page.problems, []);
});

test("a lost history answer: the pane still goes live, says so, and loads on the next scroll", async (t) => {
  const ctx = await browser.newContext({ viewport: { width: 800, height: 640 } });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  let dropped = false;
  await tapSockets(page, (f) => f.type === "history" && !dropped && (dropped = true));
  await page.goto(`${demo.web_url}?panes=alice-laptop&timeout=1500`);
  await shows(page, `${conv("alice-laptop")}[data-live="true"]`);
  await shows(page, `${conv("alice-laptop")} .more[data-error]`);
  assert.equal(await page.locator(`${conv("alice-laptop")} .msg`).count(), 0);
  await page.locator(`${conv("alice-laptop")} .list`).evaluate((el) => el.dispatchEvent(new Event("scroll")));
  await until(page, "the first page after a scroll", (sel) => document.querySelectorAll(sel).length === 20, `${conv("alice-laptop")} .msg`);
});

test("reads: one for a backfill, not one per message; and sent when the page becomes visible", async (t) => {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  const seen = await tapSockets(page);
  const readsBy = (user) => seen.filter((f) => f.type === "read" && f.sub === user);
  await page.goto(`${demo.web_url}?panes=alice-laptop,bob`);
  await shows(page, `${conv("alice-laptop")}[data-live="true"]`);
  await shows(page, `${conv("bob")}[data-live="true"]`);

  // Bob is away; Alice writes five messages; Bob comes back: they arrive as one backfill.
  await page.uncheck(`${pane("bob")} input.online`);
  await shows(page, `${pane("bob")} .state[data-state="offline"]`);
  for (let i = 1; i <= 5; i++) await say(page, "alice-laptop", `backfill ${i}`);
  await until(page, "alice's five stored", (sel) => document.querySelectorAll(sel).length === 0, `${conv("alice-laptop")} .msg.pending`);
  const before = readsBy(demo.bob).length;
  await page.check(`${pane("bob")} input.online`);
  await has(page, "bob", "backfill 5");
  await ticked(page, "alice-laptop", "backfill 5", "read");
  const backfillReads = readsBy(demo.bob).slice(before);
  assert.ok(backfillReads.length <= 2, `${backfillReads.length} reads for a backfill of 5: ${JSON.stringify(backfillReads.map((f) => f.seq))}`);

  // Hidden: what arrives is not read. Visible again: it is, without another message.
  await setVisible(page, false);
  await say(page, "alice-laptop", "while hidden");
  await has(page, "bob", "while hidden");
  await ticked(page, "alice-laptop", "while hidden", "delivered");
  const hidden = readsBy(demo.bob).length;
  await setVisible(page, true);
  await ticked(page, "alice-laptop", "while hidden", "read");
  assert.equal(readsBy(demo.bob).length, hidden + 1);
});
