/**
 * The outbox: messages sent but not stored yet. Kept in an
 * {@link OutboxStorage} until the relay answers `sent`, sent one at a time
 * per chat (so in order), retried with the same `client_generated_id`.
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
}

export class Outbox {
  private readonly items: Outgoing[] = [];
  private readonly inFlight = new Map<string, string>(); // chat -> ref
  private order = 0;
  private timer: Timer | null = null;
  /** Settles once the stored entries are in. */
  readonly loaded: Promise<void>;

  constructor(
    private readonly storage: OutboxStorage,
    private readonly backoff: BackoffOptions,
    private readonly h: OutboxHooks,
  ) {
    this.loaded = storage.load().then(
      (entries) => {
        for (const entry of entries) {
          if (!this.items.some((o) => o.entry.client_generated_id === entry.client_generated_id)) {
            this.items.push(outgoing(entry));
          }
          this.order = Math.max(this.order, entry.order);
        }
        this.items.sort((a, b) => a.entry.order - b.entry.order);
      },
      (e: unknown) => h.error(new ChatRelayError("internal", `outbox storage failed to load: ${String(e)}`)),
    );
  }

  /** Queues a message; returns its entry and `done`. */
  add(chatId: string, content: string, cgid: string): { entry: OutboxEntry; done: Promise<SendResult> } {
    const entry: OutboxEntry = {
      chat_id: chatId,
      client_generated_id: cgid,
      content,
      sender_id: this.h.me(),
      created_at: Date.now(),
      order: ++this.order,
    };
    const out = outgoing(entry);
    this.items.push(out);
    this.storage.put(entry).catch((e: unknown) =>
      this.h.error(new ChatRelayError("internal", `outbox storage failed to save: ${String(e)}`, { chatId })),
    );
    this.h.status({ chatId, clientGeneratedId: cgid, id: null, seq: null, status: "pending" });
    this.flush();
    return { entry, done: out.done };
  }

  has(cgid: string): boolean {
    return this.items.some((o) => o.entry.client_generated_id === cgid);
  }

  pending(chatId?: string): PendingMessage[] {
    return this.items.filter((o) => chatId === undefined || o.entry.chat_id === chatId).map((o) => this.view(o.entry));
  }

  view(entry: OutboxEntry): PendingMessage {
    return {
      chat_id: entry.chat_id,
      client_generated_id: entry.client_generated_id,
      content: entry.content,
      sender_id: entry.sender_id ?? this.h.me(),
      created_at: entry.created_at,
      status: "pending",
    };
  }

  async flushed(): Promise<void> {
    await this.loaded;
    await Promise.allSettled(this.items.map((o) => o.done));
    if (this.items.length > 0) await this.flushed();
  }

  /** The socket is gone: nothing is in flight any more. */
  disconnected(): void {
    this.inFlight.clear();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Sends the oldest unsent message of each chat that has none in flight. */
  flush(): void {
    this.stop();
    if (!this.h.isOpen()) return;
    const now = Date.now();
    const heads = new Set<string>();
    let wake = Infinity;
    for (const o of this.items) {
      const chatId = o.entry.chat_id;
      if (heads.has(chatId)) continue;
      heads.add(chatId);
      if (this.inFlight.has(chatId)) continue;
      if (o.notBefore > now) {
        wake = Math.min(wake, o.notBefore);
        continue;
      }
      const ref = this.h.ref();
      this.inFlight.set(chatId, ref);
      o.attempts += 1;
      this.h.write({
        type: "send",
        chat_id: chatId,
        client_generated_id: o.entry.client_generated_id,
        content: o.entry.content,
        ref,
      });
    }
    if (wake !== Infinity) this.timer = setTimeout(() => this.flush(), wake - now);
  }

  onSent(f: Frame, ref: string | null): void {
    const cgid = String(f.client_generated_id);
    const chatId = String(f.chat_id);
    if (ref !== null && this.inFlight.get(chatId) === ref) this.inFlight.delete(chatId);
    this.settle(cgid, { id: String(f.id), seq: Number(f.seq), duplicate: f.duplicate === true });
    this.flush();
  }

  /** An entry is stored (its `sent`, or its row arrived): forget it, tell the app. False if unknown. */
  settle(cgid: string, result: SendResult): boolean {
    const i = this.items.findIndex((o) => o.entry.client_generated_id === cgid);
    if (i < 0) return false;
    const [o] = this.items.splice(i, 1) as [Outgoing];
    this.storage.remove(cgid).catch(() => {});
    this.h.status({ chatId: o.entry.chat_id, clientGeneratedId: cgid, id: result.id, seq: result.seq, status: "sent" });
    o.resolve(result);
    return true;
  }

  /** An `error` answering a `send`: retry later, or fail the message for good. False if `ref` was no send. */
  onError(ref: string, err: ChatRelayError): boolean {
    let chatId: string | null = null;
    for (const [c, r] of this.inFlight) if (r === ref) chatId = c;
    if (chatId === null) return false;
    this.inFlight.delete(chatId);
    const i = this.items.findIndex((o) => o.entry.chat_id === chatId);
    const o = this.items[i];
    if (!o) return true;
    if (err.retryable) {
      o.notBefore = Date.now() + (err.retryAfterMs ?? backoffDelay(Math.min(o.attempts, 6), this.backoff));
    } else {
      this.items.splice(i, 1);
      this.storage.remove(o.entry.client_generated_id).catch(() => {});
      this.h.status({ chatId, clientGeneratedId: o.entry.client_generated_id, id: null, seq: null, status: "failed" });
      o.reject(err);
      this.h.error(err);
    }
    this.flush();
    return true;
  }
}

function outgoing(entry: OutboxEntry): Outgoing {
  let resolve!: Outgoing["resolve"];
  let reject!: Outgoing["reject"];
  const done = new Promise<SendResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  done.catch(() => {});
  return { entry, resolve, reject, done, notBefore: 0, attempts: 0 };
}
