// eslint-disable-next-line @typescript-eslint/no-explicit-any
export class Emitter {
    #listeners = new Map();
    /** Where a listener's exception is reported (default: console, warnings and errors only). */
    logger = { warn: console.warn, error: console.error };
    /** Adds a listener; returns a function that removes it. */
    on(event, fn) {
        let set = this.#listeners.get(event);
        if (!set) {
            set = new Set();
            this.#listeners.set(event, set);
        }
        set.add(fn);
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.#listeners.get(event)?.delete(fn);
    }
    emit(event, ...args) {
        const set = this.#listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(...args);
            }
            catch (e) {
                // A listener's bug must not break the connection's state machine.
                this.logger.error?.("chat-relay: an event listener threw", e);
            }
        }
    }
}
