/** Small helpers with no state: JWT claims, ids, a deferred promise. */

/** The JWT's claims, without verifying it (the relay does that). */
export function decodeClaims(token: string): { exp?: unknown; sub?: unknown } | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes)) as { exp?: unknown; sub?: unknown };
  } catch {
    return null;
  }
}

/** A v4 UUID (crypto.randomUUID where there is one; else random bytes, or Math.random in React Native). */
export function uuid(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string; getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  const byte = () => (c?.getRandomValues ? c.getRandomValues(new Uint8Array(1))[0]! : (Math.random() * 256) | 0);
  // Each 0 or 1 a random hex digit; 8 one of 8, 9, a, b (the variant); the 4 stays (the version).
  return "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (d) => (+d ^ (byte() & (15 >> (+d / 4)))).toString(16));
}

export type Timer = ReturnType<typeof setTimeout>;

/** A wire frame: one JSON object with a `type`. */
export type Frame = Record<string, unknown>;
