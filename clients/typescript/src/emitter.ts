/** A small typed event emitter (no dependencies). */
import type { Logger } from "./types.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Listener<A extends any[]> = (...args: A) => void;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export class Emitter<Events extends { [K in keyof Events]: any[] }> {
  readonly #listeners = new Map<keyof Events, Set<Listener<never[]>>>();
  /** Where a listener's exception is reported (default: console, warnings and errors only). */
  protected logger: Logger = { warn: console.warn, error: console.error };

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(fn as unknown as Listener<never[]>);
    return () => this.off(event, fn);
  }

  off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): void {
    this.#listeners.get(event)?.delete(fn as unknown as Listener<never[]>);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as unknown as Listener<Events[K]>)(...args);
      } catch (e) {
        // A listener's bug must not break the connection's state machine.
        this.logger.error?.("chat-relay: an event listener threw", e);
      }
    }
  }
}
