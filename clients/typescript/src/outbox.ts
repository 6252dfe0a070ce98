/**
 * The outbox: messages sent but not stored yet. Kept in an
 * {@link OutboxStorage} until the relay answers `sent`, sent one at a time
 * per chat (so in order), retried with the same `client_generated_id`.
 *
 * Per user: an entry goes out only on a connection of the user who wrote it
 * (the token's `sub`). Across tabs sharing a storage (IndexedDB), one tab at
 * a time, the holder of a Web Lock named by the storage, sends what was
 * stored before it started; each tab sends what it writes itself. Without
 * Web Locks every tab sends everything (the relay stores each id once). An entry the relay refuses for good (or one too large
 * to send) is marked failed and kept, never retried on its own: the app
 * calls `retry`, `edit` or `discard`.
 */
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { ChatRelayError } from "./errors.js";
import type { OutboxStorage } from "./storage.js";
import type { OutboxEntry, PendingMessage, StatusChange } from "./types.js";
import type { Frame, Timer } from "./util.js";

export interface SendResult {
  id: string;
  seq: number;
  duplicate: boolean;
}

interface Outgoing {
  entry: OutboxEntry;
  resolve: (v: SendResult) => void;
  reject: (e: ChatRelayError) => void;
  done: Promise<SendResult>;
  notBefore: number;
  attempts: number;
  /** The frame's size when it was last written. */
  bytes: number;
  /** Loaded from storage, not written by this client: sent only by the tab holding the lock. */
  inherited?: boolean;
}

/** What the outbox asks of the client. */
export interface OutboxHooks {
  /** Writes a frame when the socket is open (false: not written). */
  write(frame: Frame): boolean;
  isOpen(): boolean;
  ref(): string;
  me(): string | null;
  status(change: StatusChange): void;
  error(e: ChatRelayError): void;
  /** A send went unanswered: the socket may be dead. */
  stalled(): void;
}

export interface OutboxOptions {
  backoff: BackoffOptions;
  /** The relay's frame limit (`CHAT_RELAY_MAX_FRAME_BYTES`). */
  maxFrameBytes: number;
  sendTimeoutMs: number;
  /** `navigator.locks`, or a stand-in. */
  locks?: Locks | undefined;
}

/** The part of the Web Locks API the outbox uses. */
export interface Locks {
  request(name: string, callback: () => Promise<void>): Promise<unknown>;
}

const encoder = new TextEncoder();

export class Outbox {
  #items: Outgoing[] = [];
  readonly #inFlight = new Map<string, { ref: string; timer: Timer }>(); // chat -> send
  #order = 0;
  #timer: Timer | null = null;
  #closed = false;
  /** Settles once the stored entries are in. */
  readonly loaded: Promise<void>;
  #leader: boolean;
  #unlock: (() => void) | null = null;

  constructor(
    private readonly storage: OutboxStorage,
    private readonly o: OutboxOptions,
    private readonly h: OutboxHooks,
  ) {
    this.loaded = storage.load().then(
      (entries) => {
        // Sent before the load finished: after everything stored, in the order sent.
        const early = this.#items.splice(0);
        this.#take(entries.filter((e) => !early.some((o) => o.entry.client_generated_id === e.client_generated_id)));
        for (const o of early) {
          o.entry.order = ++this.#order;
          this.#items.push(o);
          this.#save(o.entry);
        }
      },
      (e: unknown) => h.error(new ChatRelayError("internal", `outbox storage: ${String(e)}`)),
    );
    const locks = o.locks ?? (globalThis as { navigator?: { locks?: Locks } }).navigator?.locks;
    this.#leader = !storage.shared || !locks;
    if (!this.#leader) {
      // Held until close(); the next tab in line gets it then.
      locks!.request(storage.shared!, () => new Promise<void>((release) => ((this.#unlock = release), void this.#lead()))).catch(() => {});
    }
  }

  /** Entries from storage this client does not have yet, in order. */
  #take(entries: OutboxEntry[]): void {
    for (const e of entries) {
      if (this.#items.some((o) => o.entry.client_generated_id === e.client_generated_id)) continue;
      this.#items.push(outgoing(e, true));
      this.#order = Math.max(this.#order, e.order);
    }
    this.#items.sort((a, b) => a.entry.order - b.entry.order);
  }

  /** This tab now sends what is stored: as it is now (others may have sent some, or stored more). */
  async #lead(): Promise<void> {
    await this.loaded;
    const stored = await this.storage.load().catch(() => []);
    const ids = new Set(stored.map((e) => e.client_generated_id));
    this.#items = this.#items.filter((o) => !o.inherited || ids.has(o.entry.client_generated_id));
    this.#take(stored);
    this.#leader = true;
    this.flush();
  }

  /** Queues a message; returns its entry and `done`. */
  add(chatId: string, content: string, cgid: string): { entry: OutboxEntry; done: Promise<SendResult> } {
    const entry: OutboxEntry = {
      chat_id: chatId,
      client_generated_id: cgid,
      content,
      sender_id: this.h.me(),
      created_at: Date.now(),
      order: ++this.#order,
    };
    const out = outgoing(entry);
    if (this.#closed) {
      out.reject(new ChatRelayError("closed", "client closed", { chatId }));
      return { entry, done: out.done };
    }
    this.#items.push(out);
    this.#save(entry);
    this.h.status({ chatId, clientGeneratedId: cgid, id: null, seq: null, status: "pending" });
    this.flush();
    return { entry, done: out.done };
  }

  /** The current user's entries (of one chat), oldest first, failed ones included. */
  pending(chatId?: string): PendingMessage[] {
    return this.#mine()
      .filter((o) => chatId === undefined || o.entry.chat_id === chatId)
      .map((o) => this.view(o.entry));
  }

  view(entry: OutboxEntry): PendingMessage {
    const p: PendingMessage = {
      chat_id: entry.chat_id,
      client_generated_id: entry.client_generated_id,
      content: entry.content,
      sender_id: entry.sender_id ?? this.h.me(),
      created_at: entry.created_at,
      status: entry.status ?? "pending",
    };
    if (entry.error) p.error = entry.error;
    return p;
  }

  /** Resolves when every entry of the current user is stored or failed. */
  async flushed(): Promise<void> {
    await this.loaded;
    const waiting = this.#mine().filter((o) => !o.entry.status);
    await Promise.allSettled(waiting.map((o) => o.done));
    if (this.#mine().some((o) => !o.entry.status)) await this.flushed();
  }

  /** Sends a failed entry again (as it is); its new `done`, or null if there is no such failed entry. */
  retry(cgid: string, content?: string): Promise<SendResult> | null {
    const i = this.#items.findIndex((o) => o.entry.client_generated_id === cgid && o.entry.status === "failed");
    const old = this.#items[i];
    if (!old) return null;
    const entry: OutboxEntry = { ...old.entry, content: content ?? old.entry.content };
    delete entry.status;
    delete entry.error;
    const o = outgoing(entry);
    this.#items[i] = o;
    this.#save(entry);
    this.h.status({ chatId: entry.chat_id, clientGeneratedId: cgid, id: null, seq: null, status: "pending" });
    this.flush();
    return o.done;
  }

  /** Forgets an entry that is failed or not in flight (in storage too); false if there is none such. */
  async discard(cgid: string): Promise<boolean> {
    const i = this.#items.findIndex((o) => o.entry.client_generated_id === cgid);
    const o = this.#items[i];
    if (!o || (!o.entry.status && this.#inFlight.has(o.entry.chat_id) && this.#head(o.entry.chat_id) === o)) return false;
    this.#items.splice(i, 1);
    o.reject(new ChatRelayError("closed", "discarded", { chatId: o.entry.chat_id }));
    await this.storage.remove(cgid);
    return true;
  }

  /** The socket is gone: nothing is in flight any more. `code` 1009: the largest send in flight was too large. */
  disconnected(code: number): void {
    let largest: Outgoing | undefined;
    for (const [chatId, f] of this.#inFlight) {
      clearTimeout(f.timer);
      const o = this.#head(chatId);
      if (o && (!largest || o.bytes > largest.bytes)) largest = o;
    }
    this.#inFlight.clear();
    if (code === 1009 && largest) {
      this.#fail(largest, new ChatRelayError("too_large", "the relay closed with 1009 (too large)", { chatId: largest.entry.chat_id }));
    }
  }

  /** The client closed: every `done` still open is rejected (entries stay stored for the next client). */
  close(): void {
    this.#closed = true;
    this.#unlock?.();
    this.#stop();
    for (const f of this.#inFlight.values()) clearTimeout(f.timer);
    this.#inFlight.clear();
    for (const o of this.#items) o.reject(new ChatRelayError("closed", "client closed", { chatId: o.entry.chat_id }));
  }

  #stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #mine(): Outgoing[] {
    const me = this.h.me();
    return this.#items.filter((o) => (o.entry.sender_id === null || o.entry.sender_id === me) && (this.#leader || !o.inherited));
  }

  /** The chat's next entry to send: its oldest one of the current user that has not failed. */
  #head(chatId: string): Outgoing | undefined {
    return this.#mine().find((o) => o.entry.chat_id === chatId && !o.entry.status);
  }

  /** Sends the oldest unsent message of each chat that has none in flight. */
  flush(): void {
    this.#stop();
    if (this.#closed || !this.h.isOpen()) return;
    const me = this.h.me();
    const now = Date.now();
    const heads = new Set<string>();
    let wake = Infinity;
    for (const o of this.#mine()) {
      const chatId = o.entry.chat_id;
      if (o.entry.status || heads.has(chatId)) continue;
      if (o.entry.sender_id === null && me !== null) {
        o.entry.sender_id = me; // written before any token: the user who signs in owns it
        this.#save(o.entry);
      }
      const frame: Frame = {
        type: "send",
        chat_id: chatId,
        client_generated_id: o.entry.client_generated_id,
        content: o.entry.content,
        ref: "c0000000000",
      };
      const bytes = encoder.encode(JSON.stringify(frame)).length;
      if (bytes > this.o.maxFrameBytes) {
        this.#fail(o, new ChatRelayError("too_large", `${bytes} bytes > maxFrameBytes`, { chatId }));
        continue;
      }
      heads.add(chatId);
      if (this.#inFlight.has(chatId)) continue;
      if (o.notBefore > now) {
        wake = Math.min(wake, o.notBefore);
        continue;
      }
      const ref = this.h.ref();
      // Unanswered: send again (same id, so stored once) and let the connection check the socket.
      const timer = setTimeout(() => {
        if (this.#inFlight.get(chatId)?.ref !== ref) return;
        this.#inFlight.delete(chatId);
        o.notBefore = Date.now() + backoffDelay(Math.min(o.attempts - 1, 6), this.o.backoff);
        this.h.stalled();
        this.flush();
      }, this.o.sendTimeoutMs);
      this.#inFlight.set(chatId, { ref, timer });
      o.attempts += 1;
      o.bytes = bytes;
      this.h.write({ ...frame, ref });
    }
    if (wake !== Infinity) this.#timer = setTimeout(() => this.flush(), wake - now);
  }

  onSent(f: Frame, ref: string | null): void {
    const cgid = String(f.client_generated_id);
    const chatId = String(f.chat_id);
    const flight = this.#inFlight.get(chatId);
    if (ref !== null && flight?.ref === ref) {
      clearTimeout(flight.timer);
      this.#inFlight.delete(chatId);
    }
    this.settle(cgid, { id: String(f.id), seq: Number(f.seq), duplicate: f.duplicate === true });
    this.flush();
  }

  /** An entry is stored (its `sent`, or its row arrived): forget it, tell the app. False if unknown. */
  settle(cgid: string, result: SendResult): boolean {
    const i = this.#items.findIndex((o) => o.entry.client_generated_id === cgid);
    if (i < 0) return false;
    const [o] = this.#items.splice(i, 1) as [Outgoing];
    this.storage.remove(cgid).catch(() => {});
    this.h.status({ chatId: o.entry.chat_id, clientGeneratedId: cgid, id: result.id, seq: result.seq, status: "sent" });
    o.resolve(result);
    return true;
  }

  /** An `error` answering a `send`: retry later, or fail the message for good. False if `ref` was no send. */
  onError(ref: string, err: ChatRelayError): boolean {
    let chatId: string | null = null;
    for (const [c, f] of this.#inFlight) if (f.ref === ref) chatId = c;
    if (chatId === null) return false;
    clearTimeout(this.#inFlight.get(chatId)?.timer);
    this.#inFlight.delete(chatId);
    const o = this.#head(chatId);
    if (!o) return true;
    if (err.retryable) {
      o.notBefore = Date.now() + (err.retryAfterMs ?? backoffDelay(Math.min(o.attempts, 6), this.o.backoff));
    } else {
      this.#fail(o, err);
    }
    this.flush();
    return true;
  }

  /** Refused for good: kept as failed (in storage too), `done` rejected. */
  #fail(o: Outgoing, err: ChatRelayError): void {
    o.entry.status = "failed";
    o.entry.error = err.code;
    this.#save(o.entry);
    this.h.status({ chatId: o.entry.chat_id, clientGeneratedId: o.entry.client_generated_id, id: null, seq: null, status: "failed" });
    o.reject(err);
    this.h.error(err);
  }

  #save(entry: OutboxEntry): void {
    this.storage.put({ ...entry }).catch((e: unknown) =>
      this.h.error(new ChatRelayError("internal", `outbox storage: ${String(e)}`, { chatId: entry.chat_id })),
    );
  }
}

function outgoing(entry: OutboxEntry, inherited = false): Outgoing {
  let resolve!: Outgoing["resolve"];
  let reject!: Outgoing["reject"];
  const done = new Promise<SendResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  done.catch(() => {});
  if (entry.status === "failed") reject(new ChatRelayError((entry.error as "too_large") ?? "internal", "failed earlier"));
  return { entry, resolve, reject, done, notBefore: 0, attempts: 0, bytes: 0, inherited: inherited || undefined };
}
