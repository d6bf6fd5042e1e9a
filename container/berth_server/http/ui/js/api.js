// Calls to the public REST API: relative URLs, the bearer key on every call, errors in the server's words.
import { askForKey } from "./dialogs.js";

const KEY_ITEM = "berth.apiKey";
let pendingKey = null; // one prompt shared by every call that met a 401 at the same time

/** An API error whose message is the server's own ("detail" is on every Berth error body). */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** The server's message from an error body of any family (OpenAI, TGI, Xinference). */
export function messageOf(body, status) {
  if (body && typeof body === "object") {
    if (typeof body.detail === "string") return body.detail;
    if (body.error && typeof body.error === "object" && body.error.message) return body.error.message;
    if (typeof body.error === "string") return body.error;
  }
  return `HTTP ${status}`;
}

function headers(extra) {
  const result = new Headers(extra || {});
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) result.set("Authorization", `Bearer ${key}`);
  return result;
}

async function newKey(refused) {
  if (!pendingKey) {
    pendingKey = askForKey(refused).then((key) => {
      sessionStorage.setItem(KEY_ITEM, key);
      pendingKey = null;
      return key;
    });
  }
  return pendingKey;
}

/** fetch() a path relative to the page ("v1/models"), with the key; a 401 asks for the key and retries. */
export async function apiFetch(path, options = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const sent = sessionStorage.getItem(KEY_ITEM);
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status !== 401) return response;
    // Another call may have stored a fresh key meanwhile: retry with it before asking.
    if (sessionStorage.getItem(KEY_ITEM) === sent) await newKey(sent !== null || attempt > 0);
  }
}

/** Read a reply as JSON; a non-2xx reply becomes an ApiError carrying the server's message. */
export async function readJson(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    if (!response.ok) throw new ApiError(text.slice(0, 500) || `HTTP ${response.status}`, response.status);
    throw new ApiError(`the server sent something that is not JSON: ${text.slice(0, 200)}`, response.status);
  }
  if (!response.ok) throw new ApiError(messageOf(body, response.status), response.status);
  return body;
}

/** GET or POST/DELETE a JSON API; `body` (an object) is sent as JSON. */
export async function apiJson(path, { method = "GET", body, signal } = {}) {
  const options = { method, signal };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  return readJson(await apiFetch(path, options));
}

/** Yield each parsed `data:` event of a server-sent-events reply until [DONE] (or the end of the body). */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue; // a comment such as ": berth"
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // a consumer that stops early closes the connection too
  }
}
