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
export declare class MemoryStorage implements OutboxStorage {
    #private;
    loadChat(key: string): Promise<SavedChat | null>;
    saveChat(key: string, chat: SavedChat): Promise<void>;
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(clientGeneratedId: string): Promise<void>;
}
/**
 * Browsers: survives reloads and restarts. Object stores `outbox` (keyed by
 * `client_generated_id`, each entry naming its user) and `chats` (saved
 * windows, keyed by user and chat): one database serves every user who
 * signs in on the device.
 */
export declare class IndexedDbStorage implements OutboxStorage {
    #private;
    private readonly name;
    private readonly factory;
    constructor(name?: string, factory?: IDBFactory | undefined);
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(clientGeneratedId: string): Promise<void>;
    loadChat(key: string): Promise<SavedChat | null>;
    saveChat(key: string, chat: SavedChat): Promise<void>;
}
