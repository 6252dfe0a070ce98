/** Wire types of the chat-relay protocol (1.1) and the client's own. */
export {};
