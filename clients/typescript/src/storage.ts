/**
 * Where the outbox lives. The client keeps unsent messages here until the
 * relay answers `sent`, so they survive a dropped socket (memory) or a page
 * reload (IndexedDB).
 */
import type { SavedChat } from "./chat-store.js";
import type { OutboxEntry } from "./types.js";

export interface OutboxStorage {
  /** Every stored entry, in `order`. */
  load(): Promise<OutboxEntry[]>;
  put(entry: OutboxEntry): Promise<void>;
  remove(clientGeneratedId: string): Promise<void>;
  /** Set where tabs share this storage (IndexedDB): the Web Lock that says which tab sends what was stored. */
  readonly shared?: string;
  /**
   * A chat store's saved window (optional: without it, a cold start fetches
   * history), by `key`: the user and the chat, `<sub>/<chatId>`, so one
   * storage serves every user who signs in on the device.
   */
  loadChat?(key: string): Promise<SavedChat | null>;
  saveChat?(key: string, chat: SavedChat): Promise<void>;
}

/** The default: survives reconnects, not a reload. */
export class MemoryStorage implements OutboxStorage {
  readonly #entries = new Map<string, OutboxEntry>();
  readonly #chats = new Map<string, string>();

  async loadChat(key: string): Promise<SavedChat | null> {
    const saved = this.#chats.get(key);
    return saved === undefined ? null : (JSON.parse(saved) as SavedChat);
  }

  async saveChat(key: string, chat: SavedChat): Promise<void> {
    this.#chats.set(key, JSON.stringify(chat));
  }

  async load(): Promise<OutboxEntry[]> {
    return [...this.#entries.values()].sort((a, b) => a.order - b.order);
  }

  async put(entry: OutboxEntry): Promise<void> {
    this.#entries.set(entry.client_generated_id, { ...entry });
  }

  async remove(clientGeneratedId: string): Promise<void> {
    this.#entries.delete(clientGeneratedId);
  }
}

/**
 * Browsers: survives reloads and restarts. Object stores `outbox` (keyed by
 * `client_generated_id`, each entry naming its user) and `chats` (saved
 * windows, keyed by user and chat): one database serves every user who
 * signs in on the device.
 */
export class IndexedDbStorage implements OutboxStorage {
  #db: Promise<IDBDatabase> | null = null;

  constructor(
    private readonly name = "chat-relay-outbox",
    private readonly factory: IDBFactory | undefined = globalThis.indexedDB,
  ) {}

  #open(): Promise<IDBDatabase> {
    if (!this.#db) {
      const factory = this.factory;
      if (!factory) return Promise.reject(new Error("IndexedDB is not available here; use MemoryStorage"));
      this.#db = new Promise((resolve, reject) => {
        const req = factory.open(this.name, 2);
        req.onupgradeneeded = () => {
          const db = req.result;
          if (!db.objectStoreNames.contains("outbox")) db.createObjectStore("outbox", { keyPath: "client_generated_id" });
          if (!db.objectStoreNames.contains("chats")) db.createObjectStore("chats");
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return this.#db;
  }

  async #run<T>(mode: IDBTransactionMode, op: (store: IDBObjectStore) => IDBRequest<T>, name = "outbox"): Promise<T> {
    const db = await this.#open();
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction(name, mode);
      const req = op(tx.objectStore(name));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async load(): Promise<OutboxEntry[]> {
    const all = await this.#run<OutboxEntry[]>("readonly", (s) => s.getAll() as IDBRequest<OutboxEntry[]>);
    return all.sort((a, b) => a.order - b.order);
  }

  async put(entry: OutboxEntry): Promise<void> {
    await this.#run("readwrite", (s) => s.put(entry));
  }

  async remove(clientGeneratedId: string): Promise<void> {
    await this.#run("readwrite", (s) => s.delete(clientGeneratedId));
  }

  async loadChat(key: string): Promise<SavedChat | null> {
    return ((await this.#run("readonly", (s) => s.get(key), "chats")) as SavedChat | undefined) ?? null;
  }

  async saveChat(key: string, chat: SavedChat): Promise<void> {
    await this.#run("readwrite", (s) => s.put(chat, key), "chats");
  }
}
