/** Wire types of the chat-relay protocol (1.2) and the client's own. */
export {};
