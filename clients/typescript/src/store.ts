/**
 * The shape every store has: `getSnapshot()` and `subscribe(listener)`, as
 * React's `useSyncExternalStore` wants them. Snapshots are frozen and keep
 * their reference until something in them changes. A store starts its work
 * (subscribing, fetching) with its first listener and stops it a tick after
 * its last one leaves (so React's StrictMode remount does not churn).
 */
export interface Store<T> {
  getSnapshot(): T;
  subscribe(listener: () => void): () => void;
}

export abstract class BaseStore<T extends object> implements Store<T> {
  readonly #listeners = new Set<() => void>();
  #active = false;

  constructor(protected snap: T) {
    Object.freeze(snap);
  }

  readonly getSnapshot = (): T => this.snap;

  readonly subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    if (!this.#active) {
      this.#active = true;
      this.start();
    }
    return () => {
      if (!this.#listeners.delete(listener) || this.#listeners.size) return;
      queueMicrotask(() => {
        if (this.#listeners.size || !this.#active) return;
        this.#active = false;
        this.stop();
      });
    };
  };

  protected get started(): boolean {
    return this.#active;
  }

  protected abstract start(): void;
  protected abstract stop(): void;

  /** A new snapshot with `patch`, if any of it differs; listeners hear of it. */
  protected set(patch: Partial<T>): void {
    const next = { ...this.snap, ...patch };
    if (shallowEqual(this.snap, next)) return;
    this.snap = Object.freeze(next);
    for (const l of [...this.#listeners]) l();
  }
}

/** Same keys, same values (by identity). */
export function shallowEqual(a: object, b: object): boolean {
  const [x, y] = [a as Record<string, unknown>, b as Record<string, unknown>];
  const keys = Object.keys(x);
  return keys.length === Object.keys(y).length && keys.every((k) => x[k] === y[k]);
}
