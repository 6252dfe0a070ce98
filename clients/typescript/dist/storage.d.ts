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
export declare class MemoryStorage implements OutboxStorage {
    private readonly entries;
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(clientGeneratedId: string): Promise<void>;
}
/**
 * Browsers: survives reloads and restarts. One object store keyed by
 * `client_generated_id`. Use one database name per signed-in user.
 */
export declare class IndexedDbStorage implements OutboxStorage {
    private readonly name;
    private readonly factory;
    private db;
    constructor(name?: string, factory?: IDBFactory | undefined);
    private open;
    private run;
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(clientGeneratedId: string): Promise<void>;
}
