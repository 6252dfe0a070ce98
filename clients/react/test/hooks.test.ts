// The hooks against the core package's stores, with the core's scripted
// relay (clients/typescript/test/fake.mjs) in place of a server.
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { ChatRelayClient } from "@chat-relay/client";
import { createElement as h, type ReactNode } from "react";
import { afterEach, describe, expect, it } from "vitest";

import { ChatRelayProvider, useChat, useConnection, useInbox } from "../src/index.js";
// @ts-expect-error: plain JavaScript test support from the core package
import { FakeInbox, Harness, jwt, row, summary } from "../../typescript/test/fake.mjs";

const ME = "11111111-1111-4111-8111-111111111111";
const CHAT = "c0000000-0000-4000-8000-000000000001";

const clients: ChatRelayClient[] = [];
afterEach(() => {
  cleanup();
  for (const c of clients.splice(0)) c.close();
});

function setup() {
  const harness = new Harness();
  const client = new ChatRelayClient({
    url: "ws://relay.test/v1/ws",
    WebSocket: harness.WebSocket,
    getToken: async () => jwt({ sub: ME, exp: Math.floor(Date.now() / 1000) + 3600 }),
    backoff: { initialMs: 10, maxMs: 40 },
    watchEnvironment: false,
  });
  clients.push(client);
  const wrap = (children: ReactNode) => h(ChatRelayProvider, { client }, children);
  return { harness, client, wrap };
}

/** Waits out the store's read debounce (100 ms), to see that nothing was sent: there is no event for "nothing". */
const quiet = () => act(() => new Promise<void>((r) => setTimeout(r, 250)));

function Chat({ id }: { id: string }) {
  const { items, live, hasMore } = useChat(id);
  return h(
    "ul",
    { "data-testid": "chat", "data-live": String(live), "data-more": String(hasMore) },
    items.map((i) => h("li", { key: i.key, "data-status": i.status }, i.content)),
  );
}

describe("useChat", () => {
  it("renders the newest page, then live messages, then your own as pending → sent; unsubscribes on unmount", async () => {
    const { harness, client, wrap } = setup();
    const view = render(wrap(h(Chat, { id: CHAT })));
    const ws = await harness.socket(0);
    await act(async () => {
      ws.open();
      await ws.acceptSubscribe(CHAT, { latest: 2 });
    });
    const q = await ws.frame((f: { type: string }) => f.type === "history");
    await act(async () => ws.push({ type: "history", chat_id: CHAT, messages: [row(CHAT, 1), row(CHAT, 2)], has_more: false, ref: q.ref }));
    await screen.findByText("m2");
    expect(screen.getByTestId("chat").dataset.live).toBe("true");
    expect(screen.getByTestId("chat").dataset.more).toBe("false");
    await act(async () => ws.push({ type: "message", chat_id: CHAT, seq: 3, message: row(CHAT, 3) }));
    await screen.findByText("m3");
    expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual(["m1", "m2", "m3"]);

    let done: Promise<unknown> | undefined;
    act(() => {
      done = client.chat(CHAT).send("hi there");
    });
    expect((await screen.findByText("hi there")).dataset.status).toBe("pending");
    const s = await ws.frame((f: { type: string }) => f.type === "send");
    await act(async () => {
      ws.push({ type: "sent", chat_id: CHAT, client_generated_id: s.client_generated_id, id: "x", seq: 4, duplicate: false, ref: s.ref });
      await done;
    });
    await waitFor(() => expect(screen.getByText("hi there").dataset.status).toBe("sent"));

    view.unmount();
    await waitFor(() => expect(ws.sent.some((f: { type: string }) => f.type === "unsubscribe")).toBe(true));
  });

  it("marks read only while visible", async () => {
    const { harness, wrap } = setup();
    function Hidden({ visible }: { visible: boolean }) {
      const { items } = useChat(CHAT, { visible });
      return h("p", null, items.map((i) => i.content).join(","));
    }
    const view = render(wrap(h(Hidden, { visible: false })));
    const ws = await harness.socket(0);
    await act(async () => {
      ws.open();
      await ws.acceptSubscribe(CHAT, { latest: 0 });
      ws.push({ type: "message", chat_id: CHAT, seq: 1, message: row(CHAT, 1) });
    });
    await screen.findByText("m1");
    await quiet(); // longer than the store's read debounce: a read would have gone out by now
    expect(ws.sent.filter((f: { type: string }) => f.type === "read")).toEqual([]);
    view.rerender(wrap(h(Hidden, { visible: true })));
    expect(await ws.frame((f: { type: string }) => f.type === "read")).toEqual({ type: "read", chat_id: CHAT, seq: 1 });
  });
});

it("useChat marks read only while the page is visible too", async () => {
  const { harness, wrap } = setup();
  const setPage = (state: "visible" | "hidden") => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
    document.dispatchEvent(new Event("visibilitychange"));
  };
  setPage("hidden");
  function Shown() {
    const { items } = useChat(CHAT);
    return h("p", null, items.map((i) => i.content).join(","));
  }
  render(wrap(h(Shown)));
  const ws = await harness.socket(0);
  await act(async () => {
    ws.open();
    await ws.acceptSubscribe(CHAT, { latest: 0 });
    ws.push({ type: "message", chat_id: CHAT, seq: 1, message: row(CHAT, 1) });
  });
  await screen.findByText("m1");
  await quiet(); // as above
  expect(ws.sent.filter((f: { type: string }) => f.type === "read")).toEqual([]);
  await act(async () => setPage("visible"));
  expect(await ws.frame((f: { type: string }) => f.type === "read")).toEqual({ type: "read", chat_id: CHAT, seq: 1 });
});

describe("useInbox", () => {
  it("lists chats newest first with the badge, and follows live changes", async () => {
    const { harness, wrap } = setup();
    function Inbox() {
      const { chats, unreadChats } = useInbox();
      return h("ol", { "data-testid": "inbox", "data-badge": unreadChats }, chats.map((c) => h("li", { key: c.chat_id }, c.chat_id)));
    }
    render(wrap(h(Inbox)));
    const ws = await harness.socket(0);
    const fake = new FakeInbox(ws, [
      summary("old", { seq: 1, at: "2026-01-01T00:00:00Z", unread: 1 }),
      summary("new", { seq: 2, at: "2026-01-02T00:00:00Z" }),
    ]);
    await act(async () => ws.open());
    await waitFor(() => expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual(["new", "old"]));
    expect(screen.getByTestId("inbox").dataset.badge).toBe("1");
    await act(async () => fake.change(summary("old", { seq: 2, at: "2026-01-03T00:00:00Z", unread: 2 })));
    await waitFor(() => expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual(["old", "new"]));
  });
});

describe("useConnection", () => {
  it("follows the connection's state and says why it changed", async () => {
    const { harness, client, wrap } = setup();
    function State() {
      const { state, code } = useConnection();
      return h("output", { "data-code": code }, state);
    }
    render(wrap(h(State)));
    expect(screen.getByRole("status").textContent).toBe("idle");
    act(() => client.connect());
    const ws = await harness.socket(0);
    await act(async () => ws.open());
    await waitFor(() => expect(screen.getByRole("status").textContent).toBe("open"));
    await act(async () => ws.drop(4008, "slow consumer"));
    await waitFor(() => expect(screen.getByRole("status").textContent).toBe("connecting"));
    expect(screen.getByRole("status").dataset.code).toBe("4008");
  });

  it("says so when there is no provider", () => {
    expect(() => render(h(State0))).toThrow(/ChatRelayProvider/);
    function State0() {
      useConnection();
      return null;
    }
  });
});
