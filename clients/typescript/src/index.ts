/**
 * @chat-relay/client: ordered, exactly-once chat events from chat-relay.
 *
 * ```ts
 * import { ChatRelayClient } from "@chat-relay/client";
 * const client = new ChatRelayClient({ url: "wss://relay.example.com/v1/ws", getToken });
 * client.on("message", (m, { replaces }) => render(m, replaces));
 * await client.subscribe(chatId);
 * client.send(chatId, "hello");
 * ```
 */
export { ChatRelayClient } from "./client.js";
export { ChatStore } from "./chat-store.js";
export type { ChatItem, ChatSnapshot, ChatStoreOptions, SavedChat } from "./chat-store.js";
export { InboxStore } from "./inbox-store.js";
export type { InboxSnapshot } from "./inbox-store.js";
export type { Store } from "./store.js";
export { decodeClaims, uuid } from "./util.js";
export type {
  ClientEvents,
  ClientOptions,
  MessageMeta,
  OutgoingMessage,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { ChatRelayError, UnauthorizedError } from "./errors.js";
export type { ErrorCode } from "./errors.js";
export { IndexedDbStorage, MemoryStorage } from "./storage.js";
export type { OutboxStorage } from "./storage.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export type {
  ChatMessage,
  ChatSummary,
  ConnectionSnapshot,
  ConnectionState,
  Environment,
  HistoryPage,
  InboxPage,
  Logger,
  MessageStatus,
  OutboxEntry,
  PendingMessage,
  Receipt,
  StateChange,
  StatusChange,
  Subscription,
} from "./types.js";
export type { Locks, SendResult } from "./outbox.js";
