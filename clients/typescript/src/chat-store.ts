/**
 * One conversation as a store: a window of stored messages in `seq` order
 * (history, then live), the user's own unsent and failed messages after
 * them, ticks, who is typing, who is online, and read marking while the app
 * says the chat is visible. The window and its cursor are saved through the
 * storage adapter, so a cold start renders at once and resumes with
 * `after_seq`.
 */
import type { ChatRelayClient } from "./client.js";
import type { ChatRelayError } from "./errors.js";
import type { SendResult } from "./outbox.js";
import type { OutboxStorage } from "./storage.js";
import { BaseStore, shallowEqual } from "./store.js";
import type { ChatMessage, PendingMessage } from "./types.js";
import type { Timer } from "./util.js";

/** One line of the conversation: a stored message, or one of the user's not stored yet. */
export interface ChatItem {
  /** Stable across the swap from pending to stored: the `client_generated_id` when there is one, else the id. */
  key: string;
  id: string | null;
  seq: number | null;
  sender_id: string | null;
  client_generated_id: string | null;
  content: string;
  /** RFC 3339 for stored messages, ms since the epoch for pending ones. */
  created_at: string | number | null;
  status: "pending" | "failed" | "sent" | "delivered" | "read";
  mine: boolean;
  /** Why it failed. */
  error?: string;
  /** The stored row, every column. */
  row?: ChatMessage;
}

export interface ChatSnapshot {
  chatId: string;
  /** Oldest first: the stored window, then pending and failed messages. */
  items: readonly ChatItem[];
  /** Older messages exist: `loadOlder()`. */
  hasMore: boolean;
  /** A page of history is on its way. */
  loading: boolean;
  /** Subscribed, backfill in: what shows is current. */
  live: boolean;
  /** The last thing that went wrong (a failed history page, a refused subscribe); cleared by success. */
  error: ChatRelayError | null;
  /** Who is typing now (others only; each for a few seconds). */
  typing: readonly string[];
  online: readonly string[];
}

/** What a chat keeps in storage. */
export interface SavedChat {
  messages: ChatMessage[];
  hasMore: boolean;
}

const RANK: Record<string, number> = { sent: 1, delivered: 2, read: 3 };

export interface ChatStoreOptions {
  /** Messages per history page (default 30). */
  pageSize?: number;
  /** Messages kept in storage for a cold start (default 50). */
  saveLast?: number;
  /** How long a `typing` shows (default 4 s). */
  typingMs?: number;
}

export class ChatStore extends BaseStore<ChatSnapshot> {
  #rows: ChatMessage[] = [];
  #pending: PendingMessage[] = [];
  readonly #read = new Map<string, number>();
  readonly #delivered = new Map<string, number>();
  readonly #typers = new Map<string, Timer>();
  /** Own messages the relay answered `sent` for, until their row is in the window. */
  readonly #sent = new Map<string, ChatItem>();
  #known = false;
  #offs: Array<() => void> = [];
  #visible = false;
  #restored = false;
  #latestSeq = 0;
  #saveTimer: Timer | null = null;
  /** Whose window this is: the user it was restored for (or first saved as); never saved as anyone else's. */
  #user: string | null = null;
  #readTimer: Timer | null = null;
  readonly #o: Required<ChatStoreOptions>;

  constructor(
    private readonly client: ChatRelayClient,
    readonly chatId: string,
    private readonly storage: OutboxStorage,
    opts: ChatStoreOptions = {},
  ) {
    super({ chatId, items: [], hasMore: true, loading: false, live: false, error: null, typing: [], online: [] });
    this.#o = { pageSize: 30, saveLast: 50, typingMs: 4000, ...opts };
  }

  /** Sends a message to this chat (see `ChatRelayClient.send`). */
  send(content: string): Promise<SendResult> {
    return this.client.send(this.chatId, content).done;
  }

  /** The user is typing (throttled by the client). */
  typing(): void {
    this.client.typing(this.chatId);
  }

  retry(clientGeneratedId: string): void {
    this.client.retry(clientGeneratedId);
  }

  edit(clientGeneratedId: string, content: string): void {
    this.client.edit(clientGeneratedId, content);
  }

  discard(clientGeneratedId: string): Promise<boolean> {
    return this.client.discard(clientGeneratedId);
  }

  /** Whether the user can see the chat now; while visible, what arrives is marked read. */
  setVisible(visible: boolean): void {
    this.#visible = visible;
    this.#markRead();
  }

  /** Fetches the page before the oldest message in the window. */
  async loadOlder(): Promise<void> {
    // Nothing in the window and not subscribed yet: the first page waits for the subscription.
    if (this.snap.loading || !this.snap.hasMore || (!this.#rows.length && !this.#known)) return;
    this.set({ loading: true });
    const first = this.#rows[0]?.seq;
    try {
      const page = await this.client.history(this.chatId, { beforeSeq: first ?? this.#latestSeq + 1, limit: this.#o.pageSize });
      this.#merge(page.messages);
      this.set({ hasMore: page.hasMore, loading: false, error: null });
      this.#markRead();
      this.#save();
    } catch (e) {
      this.set({ loading: false, error: e as ChatRelayError });
    }
  }

  protected start(): void {
    const c = this.client;
    const mine = (id: string) => id === this.chatId;
    this.#offs = [
      c.on("message", (m) => mine(m.chat_id) && this.#onRow(m)),
      c.on("update", (m) => {
        if (!mine(m.chat_id)) return;
        const i = this.#rows.findIndex((r) => r.id === m.id);
        if (i >= 0) this.#rows[i] = m;
        this.#render();
      }),
      c.on("delete", (d) => {
        if (!mine(d.chatId)) return;
        this.#rows = this.#rows.filter((r) => r.id !== d.id);
        this.#render();
      }),
      c.on("receipt", (r) => {
        if (!mine(r.chat_id)) return;
        this.#read.set(r.user_id, r.read_seq);
        this.#delivered.set(r.user_id, r.delivered_seq);
        this.#render();
      }),
      c.on("status", (s) => {
        if (!mine(s.chatId)) return;
        const was = this.snap.items.find((i) => i.key === s.clientGeneratedId);
        if (s.status === "sent" && was && !was.id) this.#sent.set(was.key, { ...was, id: s.id, seq: s.seq, status: "sent" });
        this.#render();
      }),
      c.on("typing", (t) => {
        if (!mine(t.chatId)) return;
        clearTimeout(this.#typers.get(t.userId));
        this.#typers.set(t.userId, setTimeout(() => this.#stopTyping(t.userId), this.#o.typingMs));
        this.set({ typing: [...this.#typers.keys()] });
      }),
      c.on("presence", (p) => mine(p.chatId) && this.set({ online: c.online(this.chatId) })),
      c.on("subscribed", (s) => {
        if (!mine(s.chatId)) return;
        this.#latestSeq = s.latestSeq;
        this.#known = true;
        // The first page starts before `live` shows, so no snapshot is live, empty and not loading.
        if (!this.#rows.length) void this.loadOlder();
        this.set({ live: true, online: s.online });
      }),
      c.on("unsubscribed", (u) => mine(u.chatId) && this.set({ live: false })),
      c.on("state", (s) => s !== "open" && this.set({ live: false })),
    ];
    this.#render();
    void this.#resume();
  }

  protected stop(): void {
    for (const off of this.#offs.splice(0)) off();
    for (const t of this.#typers.values()) clearTimeout(t);
    this.#typers.clear();
    clearTimeout(this.#readTimer ?? undefined);
    this.#flushSave();
    this.client.unsubscribe(this.chatId);
    this.set({ live: false, typing: [] });
  }

  /** The saved window first (once), then subscribe after its last message. */
  async #resume(): Promise<void> {
    if (!this.#restored) {
      this.#restored = true;
      // Saved windows are per user: only the signed-in user's (the token's `sub`).
      const user = (this.#user = await this.client.user());
      const saved = user && (await this.storage.loadChat?.(`${user}/${this.chatId}`).catch(() => null));
      if (saved && !this.#rows.length) {
        this.#merge(saved.messages);
        this.set({ hasMore: saved.hasMore });
      }
    }
    if (!this.started) return;
    const last = this.#rows.at(-1)?.seq;
    this.client.subscribe(this.chatId, last === undefined ? {} : { afterSeq: last }).then(
      () => this.set({ error: null }),
      (e: ChatRelayError) => this.started && e.code !== "closed" && this.set({ error: e }),
    );
  }

  #onRow(m: ChatMessage): void {
    this.#merge([m]);
    this.#stopTyping(m.sender_id ?? "");
    this.#markRead();
    this.#save();
  }

  #stopTyping(userId: string): void {
    if (!this.#typers.has(userId)) return;
    clearTimeout(this.#typers.get(userId));
    this.#typers.delete(userId);
    this.set({ typing: [...this.#typers.keys()] });
  }

  /** Rows into the window: by seq, once per id. */
  #merge(rows: ChatMessage[]): void {
    const byId = new Map(this.#rows.map((r) => [r.id, r]));
    for (const r of rows) byId.set(r.id, r);
    this.#rows = [...byId.values()].sort((a, b) => a.seq - b.seq);
    this.#render();
  }

  /** One read for what arrived while visible, not one per message. */
  #markRead(): void {
    if (!this.#visible || this.#readTimer) return;
    this.#readTimer = setTimeout(() => {
      this.#readTimer = null;
      const me = this.client.userId;
      const last = this.#rows.filter((r) => r.sender_id !== me).pop();
      if (this.#visible && last) this.client.markRead(this.chatId, last.seq);
    }, 100);
  }

  #save(): void {
    if (!this.storage.saveChat || this.#saveTimer) return;
    this.#saveTimer = setTimeout(() => this.#flushSave(), 250);
  }

  #flushSave(): void {
    if (!this.#saveTimer) return;
    clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    const [n, user] = [this.#o.saveLast, this.client.userId];
    const saved: SavedChat = { messages: this.#rows.slice(-n), hasMore: this.snap.hasMore || this.#rows.length > n };
    if (user && user === (this.#user ??= user)) this.storage.saveChat?.(`${user}/${this.chatId}`, saved).catch(() => {});
  }

  #render(): void {
    const me = this.client.userId;
    const others = (m: Map<string, number>) => Math.max(0, ...[...m].filter(([u]) => u !== me).map(([, s]) => s));
    const [readTo, deliveredTo] = [others(this.#read), others(this.#delivered)];
    const prev = new Map(this.snap.items.map((i) => [i.key, i]));
    this.#pending = this.client.pendingMessages(this.chatId);
    const keep = (item: ChatItem) => {
      const p = prev.get(item.key);
      return p && shallowEqual(p, item) ? p : Object.freeze(item);
    };
    const items: ChatItem[] = this.#rows.map((r) => {
      const mine = r.sender_id !== null && r.sender_id === me;
      let status = (RANK[String(r.status)] ? r.status : "sent") as ChatItem["status"];
      if (mine && r.seq <= deliveredTo && RANK[status]! < 2) status = "delivered";
      if (mine && r.seq <= readTo) status = "read";
      const { id, seq, sender_id, client_generated_id, content } = r;
      const created_at = r.created_at ?? null;
      return keep({ key: client_generated_id ?? id, id, seq, sender_id, client_generated_id, content, created_at, status, mine, row: r });
    });
    const stored = new Set(items.map((i) => i.key));
    for (const [key, item] of this.#sent) {
      if (stored.has(key)) this.#sent.delete(key);
      else items.push(keep(item));
    }
    for (const p of this.#pending) {
      const { client_generated_id: key, sender_id, content, created_at, status, error } = p;
      if (stored.has(key)) continue;
      const item: ChatItem = { key, id: null, seq: null, sender_id, client_generated_id: key, content, created_at, status, mine: true };
      if (error) item.error = error;
      items.push(keep(item));
    }
    const old = this.snap.items;
    const unchanged = old.length === items.length && items.every((it, i) => it === old[i]);
    if (!unchanged) this.set({ items: Object.freeze(items) });
  }
}
