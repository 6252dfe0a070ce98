/** The default: survives reconnects, not a reload. */
export class MemoryStorage {
    entries = new Map();
    async load() {
        return [...this.entries.values()].sort((a, b) => a.order - b.order);
    }
    async put(entry) {
        this.entries.set(entry.client_generated_id, { ...entry });
    }
    async remove(clientGeneratedId) {
        this.entries.delete(clientGeneratedId);
    }
}
/**
 * Browsers: survives reloads and restarts. One object store keyed by
 * `client_generated_id`. Use one database name per signed-in user.
 */
export class IndexedDbStorage {
    name;
    factory;
    db = null;
    constructor(name = "chat-relay-outbox", factory = globalThis.indexedDB) {
        this.name = name;
        this.factory = factory;
    }
    open() {
        if (!this.db) {
            const factory = this.factory;
            if (!factory)
                return Promise.reject(new Error("IndexedDB is not available here; use MemoryStorage"));
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
    async run(mode, op) {
        const db = await this.open();
        return new Promise((resolve, reject) => {
            const tx = db.transaction("outbox", mode);
            const req = op(tx.objectStore("outbox"));
            tx.oncomplete = () => resolve(req.result);
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    }
    async load() {
        const all = await this.run("readonly", (s) => s.getAll());
        return all.sort((a, b) => a.order - b.order);
    }
    async put(entry) {
        await this.run("readwrite", (s) => s.put(entry));
    }
    async remove(clientGeneratedId) {
        await this.run("readwrite", (s) => s.delete(clientGeneratedId));
    }
}
