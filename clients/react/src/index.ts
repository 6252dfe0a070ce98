/**
 * @chat-relay/react: thin hooks over @chat-relay/client's stores. The
 * logic (merging history, live events and the outbox; the inbox; read
 * marking) lives in the stores, outside React; these hooks subscribe with
 * `useSyncExternalStore` and hand out the snapshot and the store's actions.
 *
 * ```tsx
 * <ChatRelayProvider client={client}><App /></ChatRelayProvider>
 * const { items, send, loadOlder } = useChat(chatId);
 * const { chats, unreadChats } = useInbox();
 * const { state } = useConnection();
 * ```
 */
import { createContext, createElement, useContext, useEffect, useMemo, useSyncExternalStore, type ReactNode } from "react";
import type { ChatRelayClient, ChatSnapshot, ChatStore, ConnectionSnapshot, InboxSnapshot, InboxStore } from "@chat-relay/client";

const Context = createContext<ChatRelayClient | null>(null);

/** Makes `client` available to the hooks below it. */
export function ChatRelayProvider(props: { client: ChatRelayClient; children?: ReactNode }): ReactNode {
  return createElement(Context.Provider, { value: props.client }, props.children);
}

/** The client from the nearest {@link ChatRelayProvider}. */
export function useChatRelay(): ChatRelayClient {
  const client = useContext(Context);
  if (!client) throw new Error("@chat-relay/react: no <ChatRelayProvider client={...}> above this component");
  return client;
}

export interface UseChat extends ChatSnapshot {
  store: ChatStore;
  send: ChatStore["send"];
  loadOlder: ChatStore["loadOlder"];
  /** Say the user is typing (on input; throttled by the client). */
  sendTyping: ChatStore["typing"];
  retry: ChatStore["retry"];
  edit: ChatStore["edit"];
  discard: ChatStore["discard"];
}

/**
 * One conversation: `items` (stored messages, then your pending and failed
 * ones), `hasMore`, `loading`, `live`, `error`, `typing` (who is typing),
 * `online`, and the actions (`send`, `loadOlder`, `sendTyping`, and for
 * failed messages `retry`, `edit`, `discard`).
 * Subscribed while mounted; messages are marked read while `visible`
 * (default true; pass your own, e.g. whether the screen has focus) and the
 * page is visible (in browsers).
 */
export function useChat(chatId: string, opts: { visible?: boolean } = {}): UseChat {
  const store = useChatRelay().chat(chatId);
  const snap = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
  const page = useSyncExternalStore(onVisibility, pageVisible, () => true);
  const visible = (opts.visible ?? true) && page;
  useEffect(() => {
    store.setVisible(visible);
    return () => store.setVisible(false);
  }, [store, visible]);
  const actions = useMemo(
    () => ({
      store,
      send: (content: string) => store.send(content),
      loadOlder: () => store.loadOlder(),
      sendTyping: () => store.typing(),
      retry: (key: string) => store.retry(key),
      edit: (key: string, content: string) => store.edit(key, content),
      discard: (key: string) => store.discard(key),
    }),
    [store],
  );
  return useMemo(() => ({ ...snap, ...actions }), [snap, actions]);
}

const doc = (globalThis as { document?: Document }).document;
const pageVisible = () => doc?.visibilityState !== "hidden";
function onVisibility(fn: () => void): () => void {
  doc?.addEventListener("visibilitychange", fn);
  return () => doc?.removeEventListener("visibilitychange", fn);
}

export interface UseInbox extends InboxSnapshot {
  store: InboxStore;
  loadMore: InboxStore["loadMore"];
}

/** The conversation list (protocol 1.2 `inbox`): `chats`, `unreadChats` (the badge), `hasMore`, `loadMore()`. */
export function useInbox(): UseInbox {
  const store = useChatRelay().inbox();
  const snap = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
  return useMemo(() => ({ ...snap, store, loadMore: () => store.loadMore() }), [snap, store]);
}

/** The connection: `state` ("connecting", "open", "offline", ...), why (`code`, `reason`), and `userId`. */
export function useConnection(): ConnectionSnapshot {
  const client = useChatRelay();
  const subscribe = useMemo(() => (fn: () => void) => client.on("state", fn), [client]);
  const get = () => client.connection;
  return useSyncExternalStore(subscribe, get, get);
}
