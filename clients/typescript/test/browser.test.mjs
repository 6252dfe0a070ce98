// The browser chat of `chat-relay demo`, in a real Chromium (Debian's
// package, driven by playwright-core; set CHROMIUM to use another binary).
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

const pane = (name) => `section.pane[data-user="${name}"]`;
const texts = (page, name) => page.locator(`${pane(name)} .msg`).evaluateAll((els) => els.map((e) => e.firstChild?.textContent ?? ""));

test("two people chat: ticks, presence, typing, history, an offline switch, a reload", async (t) => {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  await page.goto(demo.web_url);
  await page.waitForSelector(`${pane("alice")}[data-live="true"]`);
  await page.waitForSelector(`${pane("bob")}[data-live="true"]`);

  // History: the newest 20 of the 60 earlier messages, then older on scroll.
  assert.equal(await page.locator(`${pane("alice")} .msg`).count(), 20);
  await page.locator(`${pane("alice")} .list`).evaluate((el) => (el.scrollTop = 0));
  await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 40, `${pane("alice")} .msg`);
  const alice = await texts(page, "alice");
  assert.equal(alice[0], "earlier message #21");
  assert.equal(alice.at(-1), "earlier message #60");

  // Presence: each sees the other online.
  await page.waitForSelector(`${pane("alice")}[data-peer-online="true"]`);
  await page.waitForSelector(`${pane("bob")}[data-peer-online="true"]`);

  // Alice writes; Bob reads it (his pane is visible), so it turns "read".
  await page.fill(`${pane("alice")} input.text`, "hi bob");
  await page.press(`${pane("alice")} input.text`, "Enter");
  await page.waitForFunction(
    (sel) => [...document.querySelectorAll(sel)].some((e) => e.firstChild?.textContent === "hi bob"),
    `${pane("bob")} .msg`,
  );
  await page.waitForSelector(`${pane("alice")} .msg.mine[data-status="read"]`);

  // Typing shows on the other side only.
  await page.type(`${pane("bob")} input.text`, "hey");
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes("bob is typing"), `${pane("alice")} .typing`);
  assert.equal(await page.locator(`${pane("bob")} .typing`).textContent(), "");
  await page.press(`${pane("bob")} input.text`, "Enter");

  // Offline: Alice's sends wait in her outbox, shown as pending...
  await page.uncheck(`${pane("alice")} input.online`);
  await page.waitForSelector(`${pane("alice")} .state[data-state="offline"]`);
  for (const text of ["sent while offline 1", "sent while offline 2"]) {
    await page.fill(`${pane("alice")} input.text`, text);
    await page.press(`${pane("alice")} input.text`, "Enter");
  }
  assert.equal(await page.locator(`${pane("alice")} .msg.pending`).count(), 2);
  // ... Bob sees her go offline, and nothing of them.
  await page.waitForSelector(`${pane("bob")}[data-peer-online="false"]`);
  assert.ok(!(await texts(page, "bob")).some((t) => t.startsWith("sent while offline")));
  const shot = process.env.UPDATE_SCREENSHOT
    ? path.resolve(here, "../../../docs/images/browser-chat.png")
    : path.join(os.tmpdir(), "chat-relay-browser-chat.png");
  mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot });

  // Back online: they flush, in order, once.
  await page.check(`${pane("alice")} input.online`);
  await page.waitForFunction(
    (sel) => [...document.querySelectorAll(sel)].filter((e) => e.firstChild?.textContent?.startsWith("sent while offline")).length === 2,
    `${pane("bob")} .msg`,
  );
  await page.waitForFunction((sel) => document.querySelectorAll(sel).length === 0, `${pane("alice")} .msg.pending`);
  const bob = await texts(page, "bob");
  assert.deepEqual(bob.slice(-3), ["hey", "sent while offline 1", "sent while offline 2"]);

  // A reload while offline: the outbox is in IndexedDB and goes out after it.
  await page.uncheck(`${pane("alice")} input.online`);
  await page.fill(`${pane("alice")} input.text`, "survives a reload");
  await page.press(`${pane("alice")} input.text`, "Enter");
  await page.reload();
  await page.waitForSelector(`${pane("bob")}[data-live="true"]`);
  await page
    .waitForFunction(
      (sel) => [...document.querySelectorAll(sel)].some((e) => e.firstChild?.textContent === "survives a reload"),
      `${pane("bob")} .msg`,
    )
    .catch(async (e) => {
      throw new Error(`${e.message}\n${await explain(page)}`);
    });
  await page.waitForSelector(`${pane("alice")}[data-live="true"]`);
  await page.waitForFunction((sel) => document.querySelectorAll(sel).length === 0, `${pane("alice")} .msg.pending`);
  const once = (await texts(page, "bob")).filter((t) => t === "survives a reload");
  assert.equal(once.length, 1);
  assert.deepEqual(problems, []);
  await ctx.close();
});

/** What the page's clients hold, for a failure's message. */
function explain(page) {
  return page.evaluate(async () => {
    const out = {};
    for (const [name, c] of Object.entries(window.clients ?? {})) {
      out[name] = {
        state: c.connectionState,
        user: c.userId,
        pending: c.pendingMessages().map((p) => [p.content, p.status]),
        last: [...document.querySelectorAll(`section.pane[data-user="${name}"] .msg`)].slice(-3).map((e) => `${e.firstChild?.textContent}|${e.dataset.status}`),
      };
    }
    return JSON.stringify(out);
  });
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

test("a lost history answer: the pane still goes live, says so, and loads on the next scroll", async (t) => {
  const ctx = await browser.newContext({ viewport: { width: 800, height: 640 } });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  let dropped = false;
  await tapSockets(page, (f) => f.type === "history" && !dropped && (dropped = true));
  await page.goto(`${demo.web_url}?as=alice&timeout=1500`);
  await page.waitForSelector(`${pane("alice")}[data-live="true"]`, { timeout: 10_000 });
  await page.waitForSelector(`${pane("alice")} .more[data-error]`, { timeout: 10_000 });
  assert.equal(await page.locator(`${pane("alice")} .msg`).count(), 0);
  await page.locator(`${pane("alice")} .list`).evaluate((el) => el.dispatchEvent(new Event("scroll")));
  await page.waitForFunction((sel) => document.querySelectorAll(sel).length === 20, `${pane("alice")} .msg`, { timeout: 10_000 });
  await ctx.close();
});

test("reads: one for a backfill, not one per message; and sent when the page becomes visible", async (t) => {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  const seen = await tapSockets(page);
  const readsBy = (user) => seen.filter((f) => f.type === "read" && f.sub === user);
  await page.goto(demo.web_url);
  await page.waitForSelector(`${pane("alice")}[data-live="true"]`);
  await page.waitForSelector(`${pane("bob")}[data-live="true"]`);
  const say = async (text) => {
    await page.fill(`${pane("alice")} input.text`, text);
    await page.press(`${pane("alice")} input.text`, "Enter");
  };
  const bobHas = (text) =>
    page.waitForFunction(([sel, t]) => [...document.querySelectorAll(sel)].some((e) => e.firstChild?.textContent === t), [`${pane("bob")} .msg`, text]);

  // Bob is away; Alice writes five messages; Bob comes back: they arrive as one backfill.
  await page.uncheck(`${pane("bob")} input.online`);
  await page.waitForSelector(`${pane("bob")} .state[data-state="offline"]`);
  for (let i = 1; i <= 5; i++) await say(`backfill ${i}`);
  await page.waitForFunction((sel) => document.querySelectorAll(sel).length === 0, `${pane("alice")} .msg.pending`);
  const before = readsBy(demo.bob).length;
  await page.check(`${pane("bob")} input.online`);
  await bobHas("backfill 5");
  await page.waitForSelector(`${pane("alice")} .msg.mine[data-status="read"] >> text=backfill 5`);
  const backfillReads = readsBy(demo.bob).slice(before);
  assert.ok(backfillReads.length <= 2, `${backfillReads.length} reads for a backfill of 5: ${JSON.stringify(backfillReads.map((f) => f.seq))}`);

  // Hidden: what arrives is not read. Visible again: it is, without another message.
  await setVisible(page, false);
  await say("while hidden");
  await bobHas("while hidden");
  await page.waitForSelector(`${pane("alice")} .msg.mine[data-status="delivered"] >> text=while hidden`);
  const hidden = readsBy(demo.bob).length;
  await setVisible(page, true);
  await page.waitForSelector(`${pane("alice")} .msg.mine[data-status="read"] >> text=while hidden`, { timeout: 10_000 });
  assert.equal(readsBy(demo.bob).length, hidden + 1);
  await ctx.close();
});
