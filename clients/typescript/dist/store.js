export class BaseStore {
    snap;
    #listeners = new Set();
    #active = false;
    constructor(snap) {
        this.snap = snap;
        Object.freeze(snap);
    }
    getSnapshot = () => this.snap;
    subscribe = (listener) => {
        this.#listeners.add(listener);
        if (!this.#active) {
            this.#active = true;
            this.start();
        }
        return () => {
            if (!this.#listeners.delete(listener) || this.#listeners.size)
                return;
            queueMicrotask(() => {
                if (this.#listeners.size || !this.#active)
                    return;
                this.#active = false;
                this.stop();
            });
        };
    };
    get started() {
        return this.#active;
    }
    /** A new snapshot with `patch`, if any of it differs; listeners hear of it. */
    set(patch) {
        const next = { ...this.snap, ...patch };
        if (shallowEqual(this.snap, next))
            return;
        this.snap = Object.freeze(next);
        for (const l of [...this.#listeners])
            l();
    }
}
/** Same keys, same values (by identity). */
export function shallowEqual(a, b) {
    const [x, y] = [a, b];
    const keys = Object.keys(x);
    return keys.length === Object.keys(y).length && keys.every((k) => x[k] === y[k]);
}
