// Calls to this server: the signed /v1 endpoints, the login link's code, the WebSocket.
// Relative URLs only: the page talks to the server that served it and to nothing else.
import { NonceClock, authHeaders } from "./signing.js";

/**
 * kind: "unreachable" (no answer at all), "auth" (HTTP 401: wrong key or secret),
 * "refused" (result false: validation, limits...; errors as the server sent them),
 * "http" (an answer that is not the API's JSON, e.g. from a proxy).
 */
export class ApiError extends Error {
  constructor(kind, message, { status = 0, errors = [] } = {}) {
    super(message);
    this.kind = kind;
    this.status = status;
    this.errors = errors;
  }
}

const clock = new NonceClock();

export function unreachableMessage() {
  return `Cannot reach the fluxrun server at ${location.origin}. Is it running? The page tries again when you ask.`;
}

async function send(path, body, headers) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError("unreachable", unreachableMessage());
  }
  clock.observe(response.headers.get("date"));
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  return { response, answer };
}

function firstMessage(answer) {
  const errors = answer && Array.isArray(answer.errors) ? answer.errors : [];
  return errors.length ? String(errors[0].message) : "";
}

export class Api {
  constructor(credentials) {
    this.credentials = credentials;
  }

  /** POST a /v1 endpoint; the answer when result is true, else an ApiError. */
  async post(path, body = {}, { retried = false } = {}) {
    const { response, answer } = await send(path, body, await authHeaders(this.credentials, clock));
    const message = firstMessage(answer);
    if (response.status === 401) {
      // Another tab of this browser may have used the same millisecond: once more, anew.
      if (!retried && /x-nonce/.test(message)) return this.post(path, body, { retried: true });
      throw new ApiError("auth", message || "The server refused these credentials (HTTP 401).", { status: 401 });
    }
    if (answer === null || typeof answer !== "object") {
      throw new ApiError("http", `The server answered HTTP ${response.status}, not the API's JSON.`,
        { status: response.status });
    }
    if (!answer.result) {
      throw new ApiError("refused", message || `The server refused the request (HTTP ${response.status}).`,
        { status: response.status, errors: answer.errors || [] });
    }
    return answer;
  }
}

/** Trade a login link's one-time code for the project's key and secret. */
export async function redeemLoginCode(code) {
  const { response, answer } = await send("/playground/login", { code }, {});
  if (answer && answer.result) return { apiKey: answer.api_key, apiSecret: answer.api_secret || "" };
  throw new ApiError(response.status === 401 ? "auth" : "http",
    firstMessage(answer) || `The server answered HTTP ${response.status}.`, { status: response.status });
}

/** Whether the server answers at all (GET /health needs no credentials). */
export async function serverAnswers() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    return response.ok;
  } catch {
    return false;
  }
}

export function socketUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1`;
}
