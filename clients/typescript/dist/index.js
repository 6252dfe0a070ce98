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
export { InboxStore } from "./inbox-store.js";
export { decodeClaims, uuid } from "./util.js";
export { ChatRelayError, UnauthorizedError } from "./errors.js";
export { IndexedDbStorage, MemoryStorage } from "./storage.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
