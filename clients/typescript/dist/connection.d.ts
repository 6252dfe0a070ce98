/**
 * The socket: dialing with a token, reconnecting with backoff, pings that
 * find a dead socket, the browser's online/visibility hints, and the
 * connection's state machine. It knows frames only as JSON objects; what
 * they mean is the client's business.
 */
import { type BackoffOptions } from "./backoff.js";
import { ChatRelayError } from "./errors.js";
import type { ConnectionState, Environment, StateChange } from "./types.js";
import type { Frame } from "./util.js";
/** The parts of the WebSocket API the client uses (browsers' `WebSocket`, `ws` under Node). */
export interface WebSocketLike {
    readonly readyState: number;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason?: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
export interface ConnectionOptions {
    url: string;
    WebSocket: WebSocketConstructor;
    backoff: BackoffOptions;
    pingIntervalMs: number;
    pingTimeoutMs: number;
    /** A socket not open this long after dialing is given up (a server that never answers the upgrade). */
    connectTimeoutMs: number;
}
/** What the connection asks of its owner. */
export interface ConnectionHooks {
    /** The token to dial with (waits for whatever must come first). */
    token(): Promise<string>;
    open(): void;
    frame(f: Frame): void;
    /** The socket is gone (`attempt`: failed attempts so far); called before any reconnect is planned. */
    closed(code: number, opened: boolean, attempt: number): void;
    state(s: ConnectionState, why: StateChange): void;
    error(e: ChatRelayError): void;
}
export declare class Connection {
    #private;
    private readonly o;
    private readonly h;
    state: ConnectionState;
    /** Closed for good (`close()`). */
    closed: boolean;
    /** Offline on purpose (`setOnline(false)`). */
    manualOffline: boolean;
    constructor(o: ConnectionOptions, h: ConnectionHooks);
    get isOpen(): boolean;
    /** Opens the connection unless it is open, opening, closed or offline on purpose (`unauthorized`: tries again). */
    connect(): void;
    /** A fresh request reference (`ref`). */
    ref(): string;
    /** Writes a frame if the socket is open; false when it is not. */
    write(frame: Frame): boolean;
    setOnline(online: boolean): void;
    close(): void;
    /** `getToken` says nobody is signed in: stop until `connect()`. */
    unauthorized(reason: string): void;
    /** Reconnect now (network back, page visible) instead of waiting for the backoff. */
    reconnectNow(): void;
    /** Closes the socket at once (as closed with `code`), without waiting for its close event. */
    drop(code: number, reason: string, opened?: boolean): void;
    /** Listens to the app's network and foreground hints; returns the function that stops listening. */
    watch(env: Environment): () => void;
    /** Listens to `online` and `visibilitychange`; returns the function that stops listening. */
    watchBrowser(): () => void;
}
