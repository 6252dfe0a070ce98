/** A small typed event emitter (no dependencies). */
import type { Logger } from "./types.js";
export type Listener<A extends any[]> = (...args: A) => void;
export declare class Emitter<Events extends {
    [K in keyof Events]: any[];
}> {
    #private;
    /** Where a listener's exception is reported (default: console, warnings and errors only). */
    protected logger: Logger;
    /** Adds a listener; returns a function that removes it. */
    on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void;
    off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): void;
    protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void;
}
