/** The default: survives reconnects, not a reload. */
export class MemoryStorage {
    #entries = new Map();
    #chats = new Map();
    async loadChat(key) {
        const saved = this.#chats.get(key);
        return saved === undefined ? null : JSON.parse(saved);
    }
    async saveChat(key, chat) {
        this.#chats.set(key, JSON.stringify(chat));
    }
    async load() {
        return [...this.#entries.values()].sort((a, b) => a.order - b.order);
    }
    async put(entry) {
        this.#entries.set(entry.client_generated_id, { ...entry });
    }
    async remove(clientGeneratedId) {
        this.#entries.delete(clientGeneratedId);
    }
}
/**
 * Browsers: survives reloads and restarts. Object stores `outbox` (keyed by
 * `client_generated_id`, each entry naming its user) and `chats` (saved
 * windows, keyed by user and chat): one database serves every user who
 * signs in on the device.
 */
export class IndexedDbStorage {
    name;
    factory;
    #db = null;
    constructor(name = "chat-relay-outbox", factory = globalThis.indexedDB) {
        this.name = name;
        this.factory = factory;
    }
    #open() {
        if (!this.#db) {
            const factory = this.factory;
            if (!factory)
                return Promise.reject(new Error("IndexedDB is not available here; use MemoryStorage"));
            this.#db = new Promise((resolve, reject) => {
                const req = factory.open(this.name, 2);
                req.onupgradeneeded = () => {
                    const db = req.result;
                    if (!db.objectStoreNames.contains("outbox"))
                        db.createObjectStore("outbox", { keyPath: "client_generated_id" });
                    if (!db.objectStoreNames.contains("chats"))
                        db.createObjectStore("chats");
                };
                req.onsuccess = () => resolve(req.result);
                req.onerror = () => reject(req.error);
            });
        }
        return this.#db;
    }
    async #run(mode, op, name = "outbox") {
        const db = await this.#open();
        return new Promise((resolve, reject) => {
            const tx = db.transaction(name, mode);
            const req = op(tx.objectStore(name));
            tx.oncomplete = () => resolve(req.result);
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    }
    async load() {
        const all = await this.#run("readonly", (s) => s.getAll());
        return all.sort((a, b) => a.order - b.order);
    }
    async put(entry) {
        await this.#run("readwrite", (s) => s.put(entry));
    }
    async remove(clientGeneratedId) {
        await this.#run("readwrite", (s) => s.delete(clientGeneratedId));
    }
    async loadChat(key) {
        return (await this.#run("readonly", (s) => s.get(key), "chats")) ?? null;
    }
    async saveChat(key, chat) {
        await this.#run("readwrite", (s) => s.put(chat, key), "chats");
    }
}
