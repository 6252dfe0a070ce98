/**
 * Where the outbox lives. The client keeps unsent messages here until the
 * relay answers `sent`, so they survive a dropped socket (memory) or a page
 * reload (IndexedDB).
 */
import type { OutboxEntry } from "./types.js";

export interface OutboxStorage {
  /** Every stored entry, in `order`. */
  load(): Promise<OutboxEntry[]>;
  put(entry: OutboxEntry): Promise<void>;
  remove(clientGeneratedId: string): Promise<void>;
}

/** The default: survives reconnects, not a reload. */
export class MemoryStorage implements OutboxStorage {
  private readonly entries = new Map<string, OutboxEntry>();

  async load(): Promise<OutboxEntry[]> {
    return [...this.entries.values()].sort((a, b) => a.order - b.order);
  }

  async put(entry: OutboxEntry): Promise<void> {
    this.entries.set(entry.client_generated_id, { ...entry });
  }

  async remove(clientGeneratedId: string): Promise<void> {
    this.entries.delete(clientGeneratedId);
  }
}

/**
 * Browsers: survives reloads and restarts. One object store keyed by
 * `client_generated_id`. Use one database name per signed-in user.
 */
export class IndexedDbStorage implements OutboxStorage {
  private db: Promise<IDBDatabase> | null = null;

  constructor(
    private readonly name = "chat-relay-outbox",
    private readonly factory: IDBFactory | undefined = globalThis.indexedDB,
  ) {}

  private open(): Promise<IDBDatabase> {
    if (!this.db) {
      const factory = this.factory;
      if (!factory) return Promise.reject(new Error("IndexedDB is not available here; use MemoryStorage"));
      this.db = new Promise((resolve, reject) => {
        const req = factory.open(this.name, 1);
        req.onupgradeneeded = () => {
          req.result.createObjectStore("outbox", { keyPath: "client_generated_id" });
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return this.db;
  }

  private async run<T>(mode: IDBTransactionMode, op: (store: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.open();
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction("outbox", mode);
      const req = op(tx.objectStore("outbox"));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async load(): Promise<OutboxEntry[]> {
    const all = await this.run<OutboxEntry[]>("readonly", (s) => s.getAll() as IDBRequest<OutboxEntry[]>);
    return all.sort((a, b) => a.order - b.order);
  }

  async put(entry: OutboxEntry): Promise<void> {
    await this.run("readwrite", (s) => s.put(entry));
  }

  async remove(clientGeneratedId: string): Promise<void> {
    await this.run("readwrite", (s) => s.delete(clientGeneratedId));
  }
}
