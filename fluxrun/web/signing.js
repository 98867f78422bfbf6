// Request signing, as SPEC.md section 2 says and fluxrun/auth.py checks:
//   x-signature = hex(HMAC-SHA256(key = API_KEY, message = API_SECRET + NONCE))
// An apikey-only project (no secret) sends x-api-key alone.
import { hmacSha256, toHex } from "./sha256.js";

const encoder = new TextEncoder();
const importedKeys = new Map();

/** WebCrypto exists only in secure contexts (https, localhost, 127.0.0.1). */
export function webCryptoAvailable() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

/** The hex signature of one nonce: WebCrypto where there is one, else sha256.js. */
export async function signature(apiKey, apiSecret, nonce) {
  const message = encoder.encode(apiSecret + nonce);
  if (!webCryptoAvailable()) return toHex(hmacSha256(encoder.encode(apiKey), message));
  let key = importedKeys.get(apiKey);
  if (!key) {
    key = await crypto.subtle.importKey("raw", encoder.encode(apiKey), { name: "HMAC", hash: "SHA-256" }, false,
      ["sign"]);
    importedKeys.set(apiKey, key);
  }
  return toHex(new Uint8Array(await crypto.subtle.sign("HMAC", key, message)));
}

/**
 * Nonces: unix milliseconds, strictly increasing (the server refuses a nonce used before),
 * corrected by the server's clock when this machine's is more than 30 s off (the server
 * refuses a time-like nonce more than 5 minutes from its own clock).
 */
export class NonceClock {
  constructor() {
    this.last = 0;
    this.skewMs = 0;
  }

  next() {
    let nonce = Date.now() + this.skewMs;
    if (nonce <= this.last) nonce = this.last + 1;
    this.last = nonce;
    return String(nonce);
  }

  /** Learn the server's clock from an answer's Date header (1 s resolution: enough). */
  observe(dateHeader) {
    const serverTime = Date.parse(dateHeader || "");
    if (Number.isNaN(serverTime)) return;
    const difference = serverTime - Date.now();
    // Within 30 s of what is known: the header's rounding and the network's time, not a new clock.
    if (Math.abs(difference - this.skewMs) <= 30_000) return;
    this.skewMs = difference;
    // Nonces count from the corrected clock now; those sent before were off by more than 30 s,
    // so the new ones do not meet them.
    this.last = 0;
  }
}

/** The authentication headers of one request. */
export async function authHeaders(credentials, clock) {
  const headers = { "x-api-key": credentials.apiKey };
  if (credentials.apiSecret) {
    const nonce = clock.next();
    headers["x-nonce"] = nonce;
    headers["x-signature"] = await signature(credentials.apiKey, credentials.apiSecret, nonce);
  }
  return headers;
}
