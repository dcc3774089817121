// The hub's browser client: one account's socket, kept open. An ES module with no dependencies.
//
//   import { HubClient } from "/client.js";
//   const client = new HubClient("/ws/7", { getToken, onEvent: (e) => show(e.id, e.payload) });
//   client.connect();
//   await client.publish("8", "Note", { n: 1 }); // -> the event's ID, stored once
//
// The same rules as the Python client (hub/client/python.py): every event is delivered once, in stream
// order, across reconnects (resumed from `lastId` with `epoch`); `onReset(welcome)` says when
// history was lost (`recovered: false`); reconnects back off with full jitter, 0.5 s doubling to
// 20 s; the token is refreshed through `getToken()` 30 s before it expires (handed to the live
// socket with `{"op": "auth"}`) and on 4001/4401 (a reconnect at once, backing off only if the
// fresh token is refused too); refusals retrying cannot fix (4400, 4403; 4001/4401 without
// `getToken`) end in state "failed". `drop()` breaks the socket on purpose, for demos.

/** First reconnect delay bound, in ms (doubling per failed attempt). */
export const FIRST_DELAY = 500;
/** Largest reconnect delay bound, in ms. */
export const MAX_DELAY = 20_000;
/** How long before a token's `exp` a fresh one is asked for, in ms. */
export const REFRESH_BEFORE = 30_000;

const FATAL = new Set([4400, 4403]); // a bad request, a forbidden account: retrying cannot help
const NEW_TOKEN = new Set([4001, 4401]); // expired or invalid: reconnect with a fresh token

/** A publish the hub answered with an error frame (`code`: e.g. `forbidden`, `unavailable`),
 * or one that cannot be sent because the client is `closed` or `failed` (`code` says which). */
export class PublishFailed extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "PublishFailed";
    /** The hub's error code (or the client's state). */
    this.code = code;
  }
}

/** A JWT's `exp` in ms since the epoch, read without verifying (the hub verifies it); null if
 * the token has none or is not a JWT. @param {string} token @returns {number | null} */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(part + "=".repeat(-part.length & 3));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const exp = JSON.parse(new TextDecoder().decode(bytes)).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** A random idempotency key (crypto.randomUUID needs a secure context; this does not). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** Stream IDs ("ms-seq" or "ms") as [ms, seq] BigInts, or null for anything else ("$"). */
function position(id) {
  const match = /^(\d+)(?:-(\d+))?$/.exec(String(id));
  return match ? [BigInt(match[1]), BigInt(match[2] ?? 0)] : null;
}

/** Whether stream ID `a` comes after `b` (numerically: no precision lost past 2^53). */
function after(a, b) {
  const [x, y] = [position(a), position(b)];
  if (x === null || y === null) return true;
  return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
}

/** One account's socket, kept open: see the module comment. */
export class HubClient {
  /** The ID of the last event delivered (or the position a welcome started after): where a
   * reconnect resumes. Store it with `epoch` to resume across page loads. @type {string|null} */
  lastId;
  /** The epoch of the account's history, from the last welcome. @type {string|null} */
  epoch;
  /** "idle", "connecting", "open", "waiting" (to reconnect), "failed" or "closed". */
  state = "idle";
  /** The close code of the last socket (e.g. 4403, 1013, 1006), once one closed. */
  closeCode = null;
  /** The close reason of the last socket ("forbidden", "unavailable", …). */
  closeReason = "";

  #url; #token; #getToken; #batch; #on;
  #ws = null; #welcomed = false; #attempt = 0; #run = 0; #retry = null; #refresh = null;
  #pending = new Map(); // idempotency key -> {message, resolve, reject}: until acknowledged

  /**
   * @param {string} url the socket's URL, `ws://host/ws/{account}` (http(s) and relative URLs
   *   are taken too)
   * @param {object} [options] token or getToken, lastId, epoch, batch, and the callbacks
   *   onEvent(event), onWelcome(welcome), onReset(welcome), onStateChange(state, reason)
   */
  constructor(url, options = {}) {
    this.#url = url;
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    this.#batch = Boolean(options.batch);
    this.lastId = options.lastId ?? null;
    this.epoch = options.epoch ?? null;
    const { onEvent, onWelcome, onReset, onStateChange } = options;
    this.#on = { onEvent, onWelcome, onReset, onStateChange };
  }

  /** Open the socket (and keep it open). Again after `close()` or "failed": starts anew. */
  connect() {
    if (["connecting", "open", "waiting"].includes(this.state)) return;
    this.#attempt = 0;
    this.#open(false);
  }

  /** Close the socket (1000) and stop reconnecting; pending publishes are rejected. */
  close() {
    this.#stop("closed", "");
  }

  /** Close the current socket as a broken connection would (1000, "dropped"): the client
   * reconnects and resumes by itself. For demos and tests. */
  drop() {
    this.#ws?.close(1000, "dropped");
  }

  /**
   * Publish one event to account `to`; resolves with its ID once stored. Sent when a socket is
   * open; if the socket goes before the ack, sent again after the reconnect with the same
   * idempotency key, so it is stored once. Rejects with a PublishFailed.
   * @param {string} to @param {string} type @param {unknown} [payload] @returns {Promise<string>}
   */
  publish(to, type, payload = null) {
    if (this.state === "closed" || this.state === "failed") {
      return Promise.reject(new PublishFailed(this.state, `the client is ${this.state}`));
    }
    const key = newKey();
    const message = JSON.stringify({ op: "publish", to, type, payload, ref: key, key });
    return new Promise((resolve, reject) => {
      this.#pending.set(key, { message, resolve, reject });
      if (this.state === "open") this.#ws.send(message);
    });
  }

  async #open(fresh) {
    const run = ++this.#run; // a close() or a newer attempt makes this one stale
    this.#setState("connecting", "");
    let token;
    try {
      token = await this.#currentToken(fresh);
    } catch (error) {
      if (run === this.#run) this.#closed(null, `getToken: ${error?.message ?? error}`, true);
      return;
    }
    if (run !== this.#run) return;
    let ws;
    try {
      ws = new WebSocket(this.#resumeUrl(), token ? ["hub", `bearer.${token}`] : ["hub"]);
    } catch (error) {
      return this.#stop("failed", String(error?.message ?? error)); // a bad URL or token
    }
    this.#ws = ws;
    this.#welcomed = false;
    ws.onmessage = (message) => this.#frame(ws, message.data);
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      clearTimeout(this.#refresh);
      this.#closed(event.code, event.reason, false);
    };
  }

  /** After a socket closed (`code` null: no socket could be tried): fail, or try again. */
  #closed(code, reason, fresh) {
    if (code !== null) [this.closeCode, this.closeReason] = [code, reason];
    if (this.#welcomed) this.#attempt = 0;
    this.#welcomed = false;
    const newToken = fresh || NEW_TOKEN.has(code);
    if (FATAL.has(code) || (NEW_TOKEN.has(code) && !this.#getToken)) {
      return this.#stop("failed", reason || `closed with ${code}`);
    }
    if (NEW_TOKEN.has(code) && this.#attempt === 0) {
      this.#attempt = 1; // at once, the first time; backing off if the fresh token fails too
      return this.#open(true);
    }
    const delay = Math.random() * Math.min(MAX_DELAY, FIRST_DELAY * 2 ** this.#attempt);
    this.#attempt += 1;
    this.#setState("waiting", reason);
    this.#retry = setTimeout(() => this.#open(newToken), delay);
  }

  #stop(state, reason) {
    this.#run += 1;
    clearTimeout(this.#retry);
    clearTimeout(this.#refresh);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = null;
      ws.close(1000);
    }
    for (const { reject } of this.#pending.values()) {
      reject(new PublishFailed(state, `the client is ${state}`));
    }
    this.#pending.clear();
    this.#setState(state, reason);
  }

  #frame(ws, data) {
    if (typeof data !== "string" || data === "pong") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    for (const item of Array.isArray(frame) ? frame : [frame]) {
      if (this.#ws !== ws) return; // a callback closed the client
      if (item === null || typeof item !== "object") continue;
      if (!("op" in item)) this.#event(item);
      else if (item.op === "welcome") this.#welcome(ws, item);
      else if (item.op === "ack" || item.op === "error") this.#answer(item);
    }
  }

  #welcome(ws, welcome) {
    const lost = welcome.recovered === false;
    this.epoch = welcome.epoch;
    // Delivery goes on after the welcome's position: after a loss, or the concrete form of "$".
    if (lost || position(this.lastId) === null) this.lastId = welcome.last_id;
    this.#welcomed = true;
    this.#call("onWelcome", welcome);
    if (lost) this.#call("onReset", welcome);
    if (this.#ws !== ws) return; // a callback closed the client
    this.#setState("open", "");
    for (const { message } of this.#pending.values()) ws.send(message);
    this.#scheduleRefresh(ws);
  }

  #event(event) {
    if (this.lastId !== null && !after(event.id, this.lastId)) return; // never twice
    this.lastId = event.id;
    this.#call("onEvent", event);
  }

  #answer(answer) {
    const pending = this.#pending.get(answer.ref);
    if (!pending) return; // a token refresh's answer, or a stale ack
    this.#pending.delete(answer.ref);
    if (answer.op === "ack") pending.resolve(answer.id);
    else pending.reject(new PublishFailed(answer.code, answer.message));
  }

  #resumeUrl() {
    const url = new URL(this.#url, globalThis.location?.href);
    url.protocol = url.protocol.replace(/^http/, "ws");
    if (this.lastId !== null) url.searchParams.set("last_id", this.lastId);
    if (this.epoch !== null) url.searchParams.set("epoch", this.epoch);
    if (this.#batch) url.searchParams.set("batch", "1");
    return url.href;
  }

  /** The token to open with: asked anew when told to, or when it expires soon. */
  async #currentToken(fresh) {
    const expires = this.#token ? tokenExpiry(this.#token) : null;
    const stale = expires !== null && expires - Date.now() < REFRESH_BEFORE;
    if (this.#getToken && (fresh || !this.#token || stale)) this.#token = await this.#getToken();
    return this.#token;
  }

  /** Ask for a fresh token before the socket's expires and hand it over on the open socket. */
  #scheduleRefresh(ws) {
    clearTimeout(this.#refresh);
    const expires = this.#token ? tokenExpiry(this.#token) : null;
    if (expires === null || !this.#getToken) return;
    const delay = Math.max(1000, expires - REFRESH_BEFORE - Date.now()); // 1 s: never a busy loop
    this.#refresh = setTimeout(async () => {
      try {
        const token = await this.#getToken();
        if (this.#ws !== ws || ws.readyState !== WebSocket.OPEN) return;
        this.#token = token;
        ws.send(JSON.stringify({ op: "auth", token, ref: `auth:${newKey()}` }));
      } catch (error) {
        reportError(error); // tried again in a second; past expiry, a reconnect takes over
      }
      if (this.#ws === ws) this.#scheduleRefresh(ws);
    }, delay);
  }

  #setState(state, reason) {
    if (state === "closed" && this.state === "closed") return;
    this.state = state;
    this.#call("onStateChange", state, reason);
  }

  #call(name, ...args) {
    try {
      this.#on[name]?.(...args);
    } catch (error) {
      reportError(error); // a failing callback must not break delivery
    }
  }
}
