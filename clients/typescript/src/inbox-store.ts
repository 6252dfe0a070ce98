/**
 * The conversation list as a store (protocol 1.2 `inbox`): summaries sorted
 * by `last_activity` (newest first), then `chat_id`; the badge
 * (`unread_chats`); older pages with `loadMore()`; live `chat` and
 * `chat_removed` frames merged in; the first page fetched again after every
 * reconnect (the relay's pages are the truth).
 */
import type { ChatRelayClient } from "./client.js";
import type { ChatRelayError } from "./errors.js";
import { BaseStore } from "./store.js";
import type { ChatSummary, InboxPage } from "./types.js";

export interface InboxSnapshot {
  chats: readonly ChatSummary[];
  /** Chats with unread messages, over all pages: the app badge. */
  unreadChats: number;
  /** Older pages exist: `loadMore()`. */
  hasMore: boolean;
  loading: boolean;
  error: ChatRelayError | null;
}

const time = (s: ChatSummary) => Date.parse(s.last_activity) || 0;
// Chat ids are uuids: lowercase hex, so localeCompare is plain byte order here.
const order = (a: ChatSummary, b: ChatSummary) => time(b) - time(a) || a.chat_id.localeCompare(b.chat_id);

export class InboxStore extends BaseStore<InboxSnapshot> {
  #next: string | null = null;
  #offs: Array<() => void> = [];
  /** Answers to an older fetch are dropped (a reconnect started a new one). */
  #gen = 0;

  constructor(
    private readonly client: ChatRelayClient,
    private readonly pageSize = 50,
  ) {
    super({ chats: [], unreadChats: 0, hasMore: false, loading: false, error: null });
  }

  /** Fetches the next older page. */
  async loadMore(): Promise<void> {
    if (this.#next === null || this.snap.loading) return;
    await this.#fetch(this.#next);
  }

  protected start(): void {
    const c = this.client;
    this.#offs = [
      c.on("chat", (s) => this.#put([s], s.unread_chats)),
      c.on("chatRemoved", ({ chatId }) => this.set({ chats: this.snap.chats.filter((s) => s.chat_id !== chatId) })),
      c.on("state", (s) => s === "open" && void this.#fetch(null)),
    ];
    if (c.connectionState === "open") void this.#fetch(null);
    else c.connect();
  }

  protected stop(): void {
    for (const off of this.#offs.splice(0)) off();
    this.#gen += 1;
    this.client.inboxOff();
    this.set({ loading: false });
  }

  async #fetch(before: string | null): Promise<void> {
    const gen = ++this.#gen;
    this.set({ loading: true });
    let page: InboxPage;
    try {
      page = await this.client.inboxPage(before === null ? {} : { before }, this.pageSize);
    } catch (e) {
      if (gen === this.#gen) this.set({ loading: false, error: e as ChatRelayError });
      return;
    }
    if (gen !== this.#gen) return;
    this.#next = page.next;
    // The first page replaces the list: it is the truth now.
    if (before === null) this.snap = Object.freeze({ ...this.snap, chats: [] });
    this.#put(page.chats, page.unreadChats, { hasMore: page.next !== null, loading: false, error: null });
  }

  #put(summaries: ChatSummary[], unread: number | undefined, extra: Partial<InboxSnapshot> = {}): void {
    const byId = new Map(this.snap.chats.map((s) => [s.chat_id, s]));
    for (const s of summaries) byId.set(s.chat_id, Object.freeze(s));
    this.set({
      chats: Object.freeze([...byId.values()].sort(order)),
      unreadChats: typeof unread === "number" ? unread : this.snap.unreadChats,
      ...extra,
    });
  }
}
