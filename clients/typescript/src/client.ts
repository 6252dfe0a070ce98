/**
 * The chat-relay client: one WebSocket, any number of chats.
 *
 * What it keeps so an app does not have to:
 * - a cursor per chat (the highest `seq` handed to the app); every
 *   (re)subscribe asks for `after_seq` = cursor, and anything at or below it,
 *   or with an `id` / `client_generated_id` already seen, is dropped;
 * - `subscribed` only once the backfill has arrived (a `ping` sent right
 *   after `subscribe` is answered after everything the subscribe owes);
 * - an outbox: `send` returns at once with a `client_generated_id`; the
 *   message is retried with that id until the relay answers `sent`, one at a
 *   time per chat (so in order), across reconnects and, with a persistent
 *   {@link OutboxStorage}, reloads;
 * - reconnects with jittered exponential backoff, at once when the browser
 *   goes online or the page becomes visible; a socket that answers nothing
 *   to a `ping` is treated as dead;
 * - tokens from `getToken`, one request at a time, refreshed before expiry
 *   with `auth` (no resubscribe);
 * - debounced `ack`s, `markRead`, and status / receipt events.
 */
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ChatRelayError } from "./errors.js";
import { MemoryStorage, type OutboxStorage } from "./storage.js";
import type {
  ChatMessage,
  ConnectionState,
  HistoryPage,
  OutboxEntry,
  PendingMessage,
  Receipt,
  StatusChange,
  Subscription,
} from "./types.js";

/** The parts of the WebSocket API the client uses (browsers' `WebSocket`, `ws` under Node). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** `ws(s)://host/v1/ws` */
  url: string;
  /** Returns a fresh access token (JWT). Called to connect and before the current one expires; never twice at once. */
  getToken: () => string | Promise<string>;
  /** Where `globalThis.WebSocket` is missing (Node 20): `import WebSocket from "ws"`. */
  WebSocket?: WebSocketConstructor;
  /** Keeps unsent messages; default {@link MemoryStorage}. In browsers use {@link IndexedDbStorage} to survive reloads. */
  storage?: OutboxStorage;
  /** Reconnect delays (default 0.5 s doubling to 30 s, jittered). */
  backoff?: BackoffOptions;
  /** How often to ping an idle connection (default 20 s). */
  pingIntervalMs?: number;
  /** No frame at all this long after a ping: the socket is dead (default 10 s). */
  pingTimeoutMs?: number;
  /** Acks for received messages are sent at most this often per chat (default 250 ms). */
  ackDelayMs?: number;
  /** Ack other people's messages as they arrive (default true): their status goes to "delivered". */
  autoAck?: boolean;
  /** Refresh the token this long before it expires (default 60 s, at most a quarter of its lifetime). */
  refreshBeforeMs?: number;
  /** Listen to `online` and `visibilitychange` (default: when running in a browser). */
  watchEnvironment?: boolean;
  /** Give up on a request (history, subscribe) after this long without an answer (default 30 s). */
  requestTimeoutMs?: number;
}

/** A `send` in progress. */
export interface OutgoingMessage extends PendingMessage {
  /** Resolves with the stored row's id and seq (once `sent` arrives); rejects with a non-retryable {@link ChatRelayError}. */
  done: Promise<{ id: string; seq: number; duplicate: boolean }>;
}

export interface MessageMeta {
  /** The `client_generated_id` of the optimistic message this row replaces, if this client sent it. */
  replaces: string | null;
}

/** Events and their arguments. */
export interface ClientEvents {
  /** A new message, in seq order, exactly once. */
  message: [message: ChatMessage, meta: MessageMeta];
  /** A message changed (content edit, status). */
  update: [message: ChatMessage];
  delete: [event: { chatId: string; seq: number; id: string }];
  receipt: [receipt: Receipt];
  /** A message's status moved: pending → sent → delivered → read, or failed. */
  status: [change: StatusChange];
  /** A subscription is live: its backfill has arrived. After every (re)connect. */
  subscribed: [subscription: Subscription];
  /** The relay ended a subscription (`reason` "forbidden": the user was removed). */
  unsubscribed: [event: { chatId: string; reason: string | null }];
  typing: [event: { chatId: string; userId: string }];
  presence: [event: { chatId: string; userId: string; online: boolean }];
  state: [state: ConnectionState];
  error: [error: ChatRelayError];
}

interface ChatState {
  wanted: boolean;
  cursor: number | null;
  ready: boolean;
  latestSeq: number;
  online: Set<string>;
  onlineTruncated: boolean;
  seenIds: Set<string>;
  seenCgids: Set<string>;
  seenOrder: Array<[string, string | null]>;
  waiters: Array<{ resolve: (s: Subscription) => void; reject: (e: ChatRelayError) => void }>;
  ackSeq: number;
  ackedSeq: number;
  ackTimer: ReturnType<typeof setTimeout> | null;
  readSeq: number;
  readSent: number;
  lastTypingAt: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
}

interface Outgoing {
  entry: OutboxEntry;
  resolve: (v: { id: string; seq: number; duplicate: boolean }) => void;
  reject: (e: ChatRelayError) => void;
  done: Promise<{ id: string; seq: number; duplicate: boolean }>;
  notBefore: number;
  attempts: number;
}

interface Pending {
  frame: Record<string, unknown>;
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: ChatRelayError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Sent again after a reconnect (reads); else rejected as `disconnected`. */
  resend: boolean;
}

/** Seen ids remembered per chat (beyond the cursor, for rows re-inserted under an old id). */
const SEEN_LIMIT = 2000;
const OPEN = 1;

export class ChatRelayClient extends Emitter<ClientEvents> {
  private readonly opts: Required<Omit<ClientOptions, "WebSocket" | "storage">>;
  private readonly WS: WebSocketConstructor;
  private readonly storage: OutboxStorage;
  private readonly chats = new Map<string, ChatState>();
  private readonly outbox: Outgoing[] = [];
  private readonly inFlight = new Map<string, string>(); // chat -> ref
  private readonly pending = new Map<string, Pending>(); // ref -> request
  private readonly barriers = new Map<string, string[]>(); // ping ref -> chats
  private readonly subscribeRefs = new Map<string, string>(); // ref -> chat

  private ws: WebSocketLike | null = null;
  private state: ConnectionState = "idle";
  private attempt = 0;
  private refs = 0;
  private order = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private deadTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private outboxTimer: ReturnType<typeof setTimeout> | null = null;
  private lastFrameAt = 0;
  private token: string | null = null;
  private tokenExp: number | null = null;
  private tokenIssued = 0;
  private tokenFlight: Promise<string> | null = null;
  private forceToken = false;
  private manualOffline = false;
  private closed = false;
  private me: string | null = null;
  private readonly loaded: Promise<void>;
  private readonly unwatch: Array<() => void> = [];

  constructor(options: ClientOptions) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError("no WebSocket here: pass one as options.WebSocket (e.g. `ws` under Node)");
    this.WS = WS;
    this.storage = options.storage ?? new MemoryStorage();
    const inBrowser = typeof (globalThis as { document?: unknown }).document !== "undefined";
    this.opts = {
      url: options.url,
      getToken: options.getToken,
      backoff: options.backoff ?? DEFAULT_BACKOFF,
      pingIntervalMs: options.pingIntervalMs ?? 20_000,
      pingTimeoutMs: options.pingTimeoutMs ?? 10_000,
      ackDelayMs: options.ackDelayMs ?? 250,
      autoAck: options.autoAck ?? true,
      refreshBeforeMs: options.refreshBeforeMs ?? 60_000,
      watchEnvironment: options.watchEnvironment ?? inBrowser,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
    };
    this.loaded = this.storage.load().then(
      (entries) => {
        for (const entry of entries) {
          if (!this.outbox.some((o) => o.entry.client_generated_id === entry.client_generated_id)) {
            this.outbox.push(this.outgoing(entry));
          }
          this.order = Math.max(this.order, entry.order);
        }
        this.outbox.sort((a, b) => a.entry.order - b.entry.order);
      },
      (e: unknown) => this.emit("error", new ChatRelayError("internal", `outbox storage failed to load: ${String(e)}`)),
    );
    if (this.opts.watchEnvironment) this.watchEnvironment();
  }

  // ------------------------------------------------------------------ API

  /** The current connection state. */
  get connectionState(): ConnectionState {
    return this.state;
  }

  /** The signed-in user (the token's `sub`), once a token was fetched. */
  get userId(): string | null {
    return this.me;
  }

  /** Opens the connection (subscribe and send do too). */
  connect(): void {
    if (this.closed || this.manualOffline) return;
    if (this.state === "idle") void this.open();
  }

  /**
   * Subscribes to a chat; resolves once the backfill after `afterSeq` (or
   * the client's own cursor) has been delivered as `message` events.
   * Without either, starts after the chat's latest message.
   */
  subscribe(chatId: string, opts: { afterSeq?: number } = {}): Promise<Subscription> {
    const chat = this.chat(chatId);
    if (opts.afterSeq !== undefined && (chat.cursor === null || opts.afterSeq > chat.cursor)) {
      chat.cursor = opts.afterSeq;
    }
    const promise = new Promise<Subscription>((resolve, reject) => chat.waiters.push({ resolve, reject }));
    promise.catch(() => {});
    if (chat.wanted && chat.ready) {
      this.settleWaiters(chatId, chat);
      return promise;
    }
    const already = chat.wanted;
    chat.wanted = true;
    if (this.state === "open" && !already) this.sendSubscribe(chatId);
    this.connect();
    return promise;
  }

  /** Stops a chat's events (its cursor is kept for a later subscribe). */
  unsubscribe(chatId: string): void {
    const chat = this.chats.get(chatId);
    if (!chat || !chat.wanted) return;
    chat.wanted = false;
    chat.ready = false;
    chat.online.clear();
    this.rejectWaiters(chat, new ChatRelayError("closed", "unsubscribed", { chatId }));
    this.write({ type: "unsubscribe", chat_id: chatId });
  }

  /** The highest seq delivered for a chat, or null. */
  cursor(chatId: string): number | null {
    return this.chats.get(chatId)?.cursor ?? null;
  }

  /** Users online in a chat (from `subscribed` and `presence`). */
  online(chatId: string): string[] {
    return [...(this.chats.get(chatId)?.online ?? [])];
  }

  /**
   * Sends a message. Returns at once with the optimistic message; the relay's
   * row arrives later as a `message` event whose `meta.replaces` names it.
   */
  send(chatId: string, content: string): OutgoingMessage {
    const entry: OutboxEntry = {
      chat_id: chatId,
      client_generated_id: uuid(),
      content,
      sender_id: this.me,
      created_at: Date.now(),
      order: ++this.order,
    };
    const out = this.outgoing(entry);
    this.outbox.push(out);
    this.storage.put(entry).catch((e: unknown) =>
      this.emit("error", new ChatRelayError("internal", `outbox storage failed to save: ${String(e)}`, { chatId })),
    );
    this.emit("status", { chatId, clientGeneratedId: entry.client_generated_id, id: null, seq: null, status: "pending" });
    this.connect();
    this.flushOutbox();
    return { ...this.pendingOf(entry), done: out.done };
  }

  /** Messages sent but not stored yet, oldest first (to render after a reload). */
  pendingMessages(chatId?: string): PendingMessage[] {
    return this.outbox.filter((o) => chatId === undefined || o.entry.chat_id === chatId).map((o) => this.pendingOf(o.entry));
  }

  /** Resolves when every message in the outbox has been stored (or failed). */
  async flushed(): Promise<void> {
    await this.loaded;
    await Promise.allSettled(this.outbox.map((o) => o.done));
    if (this.outbox.length > 0) await this.flushed();
  }

  /** The user has read a chat up to `seq`. */
  markRead(chatId: string, seq: number): void {
    const chat = this.chat(chatId);
    if (seq <= chat.readSeq) return;
    chat.readSeq = seq;
    this.sendRead(chatId, chat);
  }

  /** A page of older messages: the `limit` newest before `beforeSeq` (or the newest). */
  async history(chatId: string, opts: { beforeSeq?: number; limit?: number } = {}): Promise<HistoryPage> {
    const frame: Record<string, unknown> = { type: "history", chat_id: chatId };
    if (opts.beforeSeq !== undefined) frame.before_seq = opts.beforeSeq;
    if (opts.limit !== undefined) frame.limit = opts.limit;
    const answer = await this.request(frame, true);
    return { messages: (answer.messages as ChatMessage[]) ?? [], hasMore: answer.has_more === true };
  }

  /** The user is typing in a chat: sent at most every 2 s, only while subscribed. */
  typing(chatId: string): void {
    const chat = this.chats.get(chatId);
    const now = Date.now();
    if (!chat || !chat.ready || now - chat.lastTypingAt < 2000) return;
    chat.lastTypingAt = now;
    this.write({ type: "typing", chat_id: chatId });
  }

  /**
   * Goes offline on purpose (false): the socket closes and nothing reconnects;
   * sends queue in the outbox. Back online (true): reconnects at once.
   */
  setOnline(online: boolean): void {
    if (this.closed) return;
    if (!online) {
      this.manualOffline = true;
      this.clearReconnect();
      this.dropSocket(1000, "offline");
      this.setState("offline");
    } else if (this.manualOffline) {
      this.manualOffline = false;
      this.setState("idle");
      this.attempt = 0;
      void this.open();
    }
  }

  /** Closes for good: no reconnects; pending requests fail with `closed`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clearReconnect();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    if (this.outboxTimer) clearTimeout(this.outboxTimer);
    for (const chat of this.chats.values()) {
      if (chat.ackTimer) clearTimeout(chat.ackTimer);
      if (chat.retryTimer) clearTimeout(chat.retryTimer);
      this.rejectWaiters(chat, new ChatRelayError("closed", "client closed"));
    }
    for (const [ref, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ChatRelayError("closed", "client closed"));
      this.pending.delete(ref);
    }
    this.dropSocket(1000, "client closed");
    for (const off of this.unwatch) off();
    this.setState("closed");
  }

  // ------------------------------------------------------------ connection

  private async open(): Promise<void> {
    if (this.closed || this.manualOffline || this.ws) return;
    this.setState("connecting");
    let token: string;
    try {
      await this.loaded;
      token = await this.getToken(this.forceToken);
      this.forceToken = false;
    } catch (e) {
      this.emit("error", e instanceof ChatRelayError ? e : new ChatRelayError("token", `getToken failed: ${String(e)}`));
      this.scheduleReconnect();
      return;
    }
    if (this.closed || this.manualOffline || this.ws) return;
    const sep = this.opts.url.includes("?") ? "&" : "?";
    let ws: WebSocketLike;
    try {
      ws = new this.WS(`${this.opts.url}${sep}access_token=${encodeURIComponent(token)}`);
    } catch (e) {
      this.emit("error", new ChatRelayError("unavailable", `cannot open the socket: ${String(e)}`));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.onOpen();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      if (typeof ev.data !== "string") return;
      let frame: Record<string, unknown>;
      try {
        frame = JSON.parse(ev.data) as Record<string, unknown>;
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.onClosed(ev.code, opened);
    };
    ws.onerror = () => {
      // A close event follows.
    };
  }

  private onOpen(): void {
    this.attempt = 0;
    this.lastFrameAt = Date.now();
    this.setState("open");
    for (const [chatId, chat] of this.chats) {
      if (chat.wanted) this.sendSubscribe(chatId);
      if (chat.readSeq > chat.readSent) this.sendRead(chatId, chat);
      if (chat.ackSeq > chat.ackedSeq) this.scheduleAck(chatId, chat);
    }
    for (const [ref, p] of this.pending) {
      if (p.resend) this.write({ ...p.frame, ref });
    }
    this.flushOutbox();
    this.startPings();
    this.scheduleRefresh();
  }

  private onClosed(code: number, opened: boolean): void {
    this.ws = null;
    this.stopPings();
    this.inFlight.clear();
    this.barriers.clear();
    this.subscribeRefs.clear();
    for (const chat of this.chats.values()) chat.ready = false;
    for (const [ref, p] of this.pending) {
      if (!p.resend) {
        clearTimeout(p.timer);
        p.reject(new ChatRelayError("disconnected", "the connection closed before the answer"));
        this.pending.delete(ref);
      }
    }
    if (this.closed) return;
    if (this.manualOffline) {
      this.setState("offline");
      return;
    }
    // 4001: the token expired or was refused; fetch a new one.
    // Not even opened: maybe a refused token (HTTP 401), or the server is down.
    if (code === 4001 || (!opened && this.attempt >= 2)) this.forceToken = true;
    this.setState("connecting");
    this.scheduleReconnect(code === 4008 || code === 1001 ? Math.min(this.attempt, 1) : undefined);
  }

  private scheduleReconnect(attempt?: number): void {
    if (this.closed || this.manualOffline) return;
    this.clearReconnect();
    const delay = backoffDelay(attempt ?? this.attempt, this.opts.backoff);
    this.attempt += 1;
    this.setState("connecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  /** Reconnect now (network back, page visible) instead of waiting for the backoff. */
  private reconnectNow(): void {
    if (this.closed || this.manualOffline) return;
    if (this.ws) {
      // Maybe a dead socket: a ping tells within pingTimeoutMs.
      this.ping();
      return;
    }
    this.clearReconnect();
    this.attempt = 0;
    void this.open();
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private dropSocket(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.onClosed(code, true);
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  private startPings(): void {
    this.stopPings();
    this.pingTimer = setInterval(() => this.ping(), this.opts.pingIntervalMs);
  }

  private stopPings(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.deadTimer) clearTimeout(this.deadTimer);
    this.pingTimer = null;
    this.deadTimer = null;
  }

  /** Pings; a socket that sends no frame at all within the timeout is dead. */
  private ping(): void {
    if (!this.ws || this.ws.readyState !== OPEN || this.deadTimer) return;
    const sentAt = Date.now();
    this.write({ type: "ping", ref: this.ref() });
    this.deadTimer = setTimeout(() => {
      this.deadTimer = null;
      if (this.lastFrameAt < sentAt) this.dropSocket(4000, "no answer to ping");
    }, this.opts.pingTimeoutMs);
  }

  private watchEnvironment(): void {
    const g = globalThis as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
      document?: { visibilityState?: string; addEventListener?: (t: string, f: () => void) => void; removeEventListener?: (t: string, f: () => void) => void };
    };
    const online = () => this.reconnectNow();
    if (g.addEventListener && g.removeEventListener) {
      g.addEventListener("online", online);
      this.unwatch.push(() => g.removeEventListener?.("online", online));
    }
    const doc = g.document;
    if (doc?.addEventListener) {
      const visible = () => {
        if (doc.visibilityState === "visible") this.reconnectNow();
      };
      doc.addEventListener("visibilitychange", visible);
      this.unwatch.push(() => doc.removeEventListener?.("visibilitychange", visible));
    }
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  // ----------------------------------------------------------------- token

  /** One `getToken` call at a time; cached until it nears expiry. */
  private getToken(force: boolean): Promise<string> {
    if (this.tokenFlight) return this.tokenFlight;
    if (!force && this.token && !this.expiring()) return Promise.resolve(this.token);
    this.tokenFlight = (async () => {
      try {
        const token = await this.opts.getToken();
        if (typeof token !== "string" || token.length === 0) throw new Error("getToken returned no token");
        this.token = token;
        this.tokenIssued = Date.now();
        const claims = decodeClaims(token);
        this.tokenExp = typeof claims?.exp === "number" ? claims.exp * 1000 : null;
        if (typeof claims?.sub === "string") this.me = claims.sub;
        return token;
      } catch (e) {
        throw new ChatRelayError("token", `getToken failed: ${e instanceof Error ? e.message : String(e)}`);
      } finally {
        this.tokenFlight = null;
      }
    })();
    return this.tokenFlight;
  }

  private margin(): number {
    const lifetime = this.tokenExp === null ? Infinity : this.tokenExp - this.tokenIssued;
    return Math.min(this.opts.refreshBeforeMs, lifetime / 4);
  }

  private expiring(): boolean {
    return this.tokenExp !== null && Date.now() >= this.tokenExp - this.margin();
  }

  private scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (this.tokenExp === null || this.closed) return;
    const delay = Math.max(0, this.tokenExp - this.margin() - Date.now());
    this.refreshTimer = setTimeout(() => void this.refresh(), delay);
  }

  /** Fetches a new token and hands it to the open connection with `auth`. */
  private async refresh(): Promise<void> {
    this.refreshTimer = null;
    let token: string;
    try {
      token = await this.getToken(true);
    } catch (e) {
      this.emit("error", e as ChatRelayError);
      // Try again soon, while the old token may still be valid.
      this.refreshTimer = setTimeout(() => void this.refresh(), backoffDelay(1, this.opts.backoff));
      return;
    }
    if (this.ws && this.state === "open") {
      try {
        await this.request({ type: "auth", access_token: token }, false);
      } catch (e) {
        // Refused: the relay closes with 4001 and the reconnect fetches anew.
        if (e instanceof ChatRelayError && e.code !== "disconnected") this.emit("error", e);
      }
    }
    this.scheduleRefresh();
  }

  // ---------------------------------------------------------------- frames

  private onFrame(f: Record<string, unknown>): void {
    const chatId = typeof f.chat_id === "string" ? f.chat_id : "";
    const ref = f.ref === undefined || f.ref === null ? null : String(f.ref);
    switch (f.type) {
      case "message":
        return this.onMessage(chatId, f.message as ChatMessage);
      case "update": {
        const m = f.message as ChatMessage;
        this.emit("update", m);
        if (typeof m?.status === "string") {
          this.emit("status", {
            chatId,
            clientGeneratedId: m.client_generated_id ?? null,
            id: m.id,
            seq: m.seq,
            status: m.status as StatusChange["status"],
          });
        }
        return;
      }
      case "delete":
        this.emit("delete", { chatId, seq: Number(f.seq), id: String(f.id) });
        return;
      case "receipt":
        this.emit("receipt", {
          chat_id: chatId,
          user_id: String(f.user_id),
          delivered_seq: Number(f.delivered_seq),
          read_seq: Number(f.read_seq),
        });
        return;
      case "subscribed":
        return this.onSubscribed(chatId, f, ref);
      case "unsubscribed":
        if (ref === null) {
          const chat = this.chats.get(chatId);
          if (chat) {
            chat.wanted = false;
            chat.ready = false;
            chat.online.clear();
            this.rejectWaiters(chat, new ChatRelayError("forbidden", "removed from the chat", { chatId }));
          }
          this.emit("unsubscribed", { chatId, reason: typeof f.reason === "string" ? f.reason : null });
        }
        return;
      case "sent":
        return this.onSent(f, ref);
      case "pong":
        return this.onPong(ref);
      case "typing":
        this.emit("typing", { chatId, userId: String(f.user_id) });
        return;
      case "presence": {
        const chat = this.chats.get(chatId);
        const userId = String(f.user_id);
        const online = f.online === true;
        if (chat) {
          if (online) chat.online.add(userId);
          else chat.online.delete(userId);
        }
        this.emit("presence", { chatId, userId, online });
        return;
      }
      case "error":
        return this.onError(f, ref);
      default:
        if (ref !== null) this.answer(ref, f);
    }
  }

  private onMessage(chatId: string, m: ChatMessage): void {
    const chat = this.chats.get(chatId);
    // Not subscribed (any more): a later subscribe reads it from the cursor.
    if (!chat || !chat.wanted || !m || typeof m.seq !== "number") return;
    if (chat.cursor !== null && m.seq <= chat.cursor) return;
    if (chat.seenIds.has(m.id)) return;
    const cgid = m.client_generated_id ?? null;
    if (cgid !== null && chat.seenCgids.has(cgid)) return;
    chat.cursor = m.seq;
    remember(chat, m.id, cgid);
    let replaces: string | null = null;
    if (cgid !== null) {
      const i = this.outbox.findIndex((o) => o.entry.client_generated_id === cgid);
      if (i >= 0) {
        replaces = cgid;
        this.settle(i, { id: m.id, seq: m.seq, duplicate: false });
      } else if (m.sender_id !== null && m.sender_id === this.me) {
        replaces = cgid; // sent earlier by this user (another tab, before a reload)
      }
    }
    this.emit("message", m, { replaces });
    if (this.opts.autoAck && m.sender_id !== this.me) {
      chat.ackSeq = Math.max(chat.ackSeq, m.seq);
      this.scheduleAck(chatId, chat);
    }
  }

  private onSubscribed(chatId: string, f: Record<string, unknown>, ref: string | null): void {
    if (ref === null || this.subscribeRefs.get(ref) !== chatId) return;
    this.subscribeRefs.delete(ref);
    const chat = this.chats.get(chatId);
    if (!chat || !chat.wanted) return;
    chat.latestSeq = Number(f.latest_seq ?? 0);
    if (chat.cursor === null) chat.cursor = chat.latestSeq;
    chat.online = new Set(Array.isArray(f.online) ? f.online.map(String) : []);
    chat.onlineTruncated = f.online_truncated === true;
  }

  private onPong(ref: string | null): void {
    if (ref === null) return;
    const chats = this.barriers.get(ref);
    if (!chats) return;
    this.barriers.delete(ref);
    for (const chatId of chats) {
      const chat = this.chats.get(chatId);
      if (!chat || !chat.wanted || chat.ready) continue;
      chat.ready = true;
      const sub = this.subscription(chatId, chat);
      this.emit("subscribed", sub);
      this.settleWaiters(chatId, chat);
    }
  }

  private onError(f: Record<string, unknown>, ref: string | null): void {
    const err = ChatRelayError.fromFrame(f);
    if (ref !== null && this.subscribeRefs.has(ref)) {
      const chatId = this.subscribeRefs.get(ref) as string;
      this.subscribeRefs.delete(ref);
      const chat = this.chats.get(chatId);
      if (!chat) return;
      if (err.retryable) {
        this.retrySubscribe(chatId, chat, err.retryAfterMs);
      } else {
        chat.wanted = false;
        this.rejectWaiters(chat, err);
        this.emit("error", err);
      }
      return;
    }
    if (ref !== null && this.onSendError(ref, err)) return;
    if (ref !== null && this.pending.has(ref)) {
      this.fail(ref, err);
      return;
    }
    // Unasked: a subscription the relay could not keep ("subscribe again").
    if (err.chatId && err.code === "unavailable") {
      const chat = this.chats.get(err.chatId);
      if (chat?.wanted) {
        chat.ready = false;
        this.retrySubscribe(err.chatId, chat);
      }
    }
    this.emit("error", err);
  }

  // ---------------------------------------------------------- subscriptions

  private chat(chatId: string): ChatState {
    let chat = this.chats.get(chatId);
    if (!chat) {
      chat = {
        wanted: false,
        cursor: null,
        ready: false,
        latestSeq: 0,
        online: new Set(),
        onlineTruncated: false,
        seenIds: new Set(),
        seenCgids: new Set(),
        seenOrder: [],
        waiters: [],
        ackSeq: 0,
        ackedSeq: 0,
        ackTimer: null,
        readSeq: 0,
        readSent: 0,
        lastTypingAt: 0,
        retryTimer: null,
      };
      this.chats.set(chatId, chat);
    }
    return chat;
  }

  private sendSubscribe(chatId: string): void {
    const chat = this.chats.get(chatId);
    if (!chat || !this.ws || this.ws.readyState !== OPEN) return;
    const ref = this.ref();
    this.subscribeRefs.set(ref, chatId);
    const frame: Record<string, unknown> = { type: "subscribe", chat_id: chatId, ref };
    if (chat.cursor !== null) frame.after_seq = chat.cursor;
    this.write(frame);
    // The pong comes after everything the subscribe owes: the backfill.
    const barrier = this.ref();
    this.barriers.set(barrier, [chatId]);
    this.write({ type: "ping", ref: barrier });
  }

  private retrySubscribe(chatId: string, chat: ChatState, afterMs?: number): void {
    if (chat.retryTimer) return;
    chat.retryTimer = setTimeout(() => {
      chat.retryTimer = null;
      if (chat.wanted && !chat.ready) this.sendSubscribe(chatId);
    }, afterMs ?? backoffDelay(1, this.opts.backoff));
  }

  private subscription(chatId: string, chat: ChatState): Subscription {
    return { chatId, latestSeq: chat.latestSeq, online: [...chat.online], onlineTruncated: chat.onlineTruncated };
  }

  private settleWaiters(chatId: string, chat: ChatState): void {
    const sub = this.subscription(chatId, chat);
    for (const w of chat.waiters.splice(0)) w.resolve(sub);
  }

  private rejectWaiters(chat: ChatState, err: ChatRelayError): void {
    for (const w of chat.waiters.splice(0)) w.reject(err);
  }

  // ------------------------------------------------------------ acks, reads

  private scheduleAck(chatId: string, chat: ChatState): void {
    if (chat.ackTimer) return;
    chat.ackTimer = setTimeout(() => {
      chat.ackTimer = null;
      if (chat.ackSeq > chat.ackedSeq && this.write({ type: "ack", chat_id: chatId, seq: chat.ackSeq })) {
        chat.ackedSeq = chat.ackSeq;
      }
    }, this.opts.ackDelayMs);
  }

  private sendRead(chatId: string, chat: ChatState): void {
    if (this.write({ type: "read", chat_id: chatId, seq: chat.readSeq })) chat.readSent = chat.readSeq;
  }

  // ---------------------------------------------------------------- outbox

  private outgoing(entry: OutboxEntry): Outgoing {
    let resolve!: Outgoing["resolve"];
    let reject!: Outgoing["reject"];
    const done = new Promise<{ id: string; seq: number; duplicate: boolean }>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => {});
    return { entry, resolve, reject, done, notBefore: 0, attempts: 0 };
  }

  private pendingOf(entry: OutboxEntry): PendingMessage {
    return {
      chat_id: entry.chat_id,
      client_generated_id: entry.client_generated_id,
      content: entry.content,
      sender_id: entry.sender_id ?? this.me,
      created_at: entry.created_at,
      status: "pending",
    };
  }

  /** Sends the oldest unsent message of each chat that has none in flight. */
  private flushOutbox(): void {
    if (this.outboxTimer) clearTimeout(this.outboxTimer);
    this.outboxTimer = null;
    if (!this.ws || this.ws.readyState !== OPEN) return;
    const now = Date.now();
    const heads = new Set<string>();
    let wake = Infinity;
    for (const o of this.outbox) {
      const chatId = o.entry.chat_id;
      if (heads.has(chatId)) continue;
      heads.add(chatId);
      if (this.inFlight.has(chatId)) continue;
      if (o.notBefore > now) {
        wake = Math.min(wake, o.notBefore);
        continue;
      }
      const ref = this.ref();
      this.inFlight.set(chatId, ref);
      o.attempts += 1;
      this.write({
        type: "send",
        chat_id: chatId,
        client_generated_id: o.entry.client_generated_id,
        content: o.entry.content,
        ref,
      });
    }
    if (wake !== Infinity) this.outboxTimer = setTimeout(() => this.flushOutbox(), wake - now);
  }

  private onSent(f: Record<string, unknown>, ref: string | null): void {
    const cgid = String(f.client_generated_id);
    const chatId = String(f.chat_id);
    if (ref !== null && this.inFlight.get(chatId) === ref) this.inFlight.delete(chatId);
    const i = this.outbox.findIndex((o) => o.entry.client_generated_id === cgid);
    if (i >= 0) this.settle(i, { id: String(f.id), seq: Number(f.seq), duplicate: f.duplicate === true });
    this.flushOutbox();
  }

  /** An outbox entry is stored: forget it, tell the app. */
  private settle(i: number, result: { id: string; seq: number; duplicate: boolean }): void {
    const [o] = this.outbox.splice(i, 1);
    if (!o) return;
    this.storage.remove(o.entry.client_generated_id).catch(() => {});
    this.emit("status", {
      chatId: o.entry.chat_id,
      clientGeneratedId: o.entry.client_generated_id,
      id: result.id,
      seq: result.seq,
      status: "sent",
    });
    o.resolve(result);
  }

  /** An `error` answering a `send`: retry later, or fail the message for good. */
  private onSendError(ref: string, err: ChatRelayError): boolean {
    let chatId: string | null = null;
    for (const [c, r] of this.inFlight) if (r === ref) chatId = c;
    if (chatId === null) return false;
    this.inFlight.delete(chatId);
    const i = this.outbox.findIndex((o) => o.entry.chat_id === chatId);
    const o = this.outbox[i];
    if (!o) return true;
    if (err.retryable) {
      o.notBefore = Date.now() + (err.retryAfterMs ?? backoffDelay(Math.min(o.attempts, 6), this.opts.backoff));
    } else {
      this.outbox.splice(i, 1);
      this.storage.remove(o.entry.client_generated_id).catch(() => {});
      this.emit("status", {
        chatId,
        clientGeneratedId: o.entry.client_generated_id,
        id: null,
        seq: null,
        status: "failed",
      });
      o.reject(err);
      this.emit("error", err);
    }
    this.flushOutbox();
    return true;
  }

  // -------------------------------------------------------------- requests

  private request(frame: Record<string, unknown>, resend: boolean): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.reject(new ChatRelayError("closed", "client closed"));
    const ref = this.ref();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.fail(ref, new ChatRelayError("timeout", `no answer to ${String(frame.type)} in time`)),
        this.opts.requestTimeoutMs,
      );
      this.pending.set(ref, { frame, resolve, reject, timer, resend });
      if (this.state === "open") this.write({ ...frame, ref });
      else if (!resend) this.fail(ref, new ChatRelayError("disconnected", "not connected"));
      else this.connect();
    });
  }

  private answer(ref: string, f: Record<string, unknown>): void {
    const p = this.pending.get(ref);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(ref);
    p.resolve(f);
  }

  private fail(ref: string, err: ChatRelayError): void {
    const p = this.pending.get(ref);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(ref);
    p.reject(err);
  }

  private write(frame: Record<string, unknown>): boolean {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  private ref(): string {
    this.refs += 1;
    return `c${this.refs}`;
  }
}

function remember(chat: ChatState, id: string, cgid: string | null): void {
  chat.seenIds.add(id);
  if (cgid !== null) chat.seenCgids.add(cgid);
  chat.seenOrder.push([id, cgid]);
  while (chat.seenOrder.length > SEEN_LIMIT) {
    const old = chat.seenOrder.shift();
    if (!old) break;
    chat.seenIds.delete(old[0]);
    if (old[1] !== null) chat.seenCgids.delete(old[1]);
  }
}

/** The JWT's claims, without verifying it (the relay does that). */
export function decodeClaims(token: string): { exp?: unknown; sub?: unknown } | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const json = decodeURIComponent(
      Array.from(atob(b64), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json) as { exp?: unknown; sub?: unknown };
  } catch {
    return null;
  }
}

/** A v4 UUID (crypto.randomUUID where there is one). */
export function uuid(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string; getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
