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
export declare abstract class BaseStore<T extends object> implements Store<T> {
    #private;
    protected snap: T;
    constructor(snap: T);
    readonly getSnapshot: () => T;
    readonly subscribe: (listener: () => void) => (() => void);
    protected get started(): boolean;
    protected abstract start(): void;
    protected abstract stop(): void;
    /** A new snapshot with `patch`, if any of it differs; listeners hear of it. */
    protected set(patch: Partial<T>): void;
}
/** Same keys, same values (by identity). */
export declare function shallowEqual(a: object, b: object): boolean;
