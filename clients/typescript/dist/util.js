/** Small helpers with no state: JWT claims, ids, a deferred promise. */
/** The JWT's claims, without verifying it (the relay does that). */
export function decodeClaims(token) {
    const part = token.split(".")[1];
    if (!part)
        return null;
    try {
        const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        return JSON.parse(new TextDecoder().decode(bytes));
    }
    catch {
        return null;
    }
}
/** A v4 UUID (crypto.randomUUID where there is one). */
export function uuid() {
    const c = globalThis.crypto;
    if (c?.randomUUID)
        return c.randomUUID();
    const b = new Uint8Array(16);
    if (c?.getRandomValues)
        c.getRandomValues(b);
    else
        for (let i = 0; i < 16; i++)
            b[i] = Math.floor(Math.random() * 256);
    b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
    b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
