// TypeScript declarations of the hub's browser client, GET /client.js.

/** First reconnect delay bound, in ms (doubling per failed attempt): 500. */
export declare const FIRST_DELAY: number;
/** Largest reconnect delay bound, in ms: 20000. */
export declare const MAX_DELAY: number;
/** How long before a token's `exp` a fresh one is asked for, in ms: 30000. */
export declare const REFRESH_BEFORE: number;

/** Any JSON value: what an event's payload may be. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/** One event, as the hub delivers it. */
export interface HubEvent {
  /** Its stream ID, `"<ms>-<seq>"`. */
  id: string;
  type: string;
  /** The JSON value published (a plain-text payload written by another producer: a string). */
  payload: JsonValue;
}

/** The first frame of every socket. */
export interface Welcome {
  op: "welcome";
  account: string;
  /** The concrete position delivery starts after (`"0-0"` from the start). */
  last_id: string;
  /** The account's history's epoch: store it with `lastId`. */
  epoch: string;
  /** False when events after the requested position are gone: resync. */
  recovered: boolean;
}

/**
 * `"idle"` (before `connect()`), `"connecting"`, `"open"`, `"waiting"` (backing off before a
 * reconnect), `"failed"` (a refusal retrying cannot fix) or `"closed"` (by `close()`): the
 * Python client's names.
 */
export type HubState = "idle" | "connecting" | "open" | "waiting" | "failed" | "closed";

export interface HubClientOptions {
  /** The token to open with (offered as the `bearer.<token>` subprotocol). */
  token?: string | null;
  /** Called for a token before the first socket (when `token` is missing or expires within
   * 30 s), 30 s before the current one expires (handed to the live socket), and after a 4001
   * or 4401 close. Without it, those closes end in `"failed"`. */
  getToken?: (() => string | Promise<string>) | null;
  /** Resume after this event ID (`"$"`: only events after the moment of connection). */
  lastId?: string | null;
  /** The epoch stored with `lastId`, so that lost history is detected. */
  epoch?: string | null;
  /** Ask for `batch=1` (events come several per frame; delivery is the same). */
  batch?: boolean;
  /** Each event, once, in stream order. */
  onEvent?: (event: HubEvent) => void;
  /** Each socket's welcome. */
  onWelcome?: (welcome: Welcome) => void;
  /** A welcome with `recovered: false`: events were lost; resync from your source of truth. */
  onReset?: (welcome: Welcome) => void;
  /** Each state change, with the close reason that caused it (`""` if none). */
  onStateChange?: (state: HubState, reason: string) => void;
}

/** A publish answered with an error frame, or made while the client is closed or failed. */
export declare class PublishFailed extends Error {
  constructor(code: string, message: string);
  /** The hub's error code (`forbidden`, `invalid_payload`, `unavailable`, …), or `"closed"` /
   * `"failed"` (the client's state). */
  readonly code: string;
}

/** A JWT's `exp` in ms since the epoch, read without verifying; null if there is none. */
export declare function tokenExpiry(token: string): number | null;

/** One account's socket, kept open: reconnects, resumes, refreshes its token by itself. */
export declare class HubClient {
  /** `url`: `ws(s)://host/ws/{account}`; `http(s)://` and relative URLs are taken too. */
  constructor(url: string, options?: HubClientOptions);
  /** The last event delivered (or the position a welcome started after): where a reconnect
   * resumes. */
  lastId: string | null;
  /** The epoch from the last welcome. */
  epoch: string | null;
  readonly state: HubState;
  /** The close code of the last socket (4403, 1013, 1006, …), null before any closed. */
  readonly closeCode: number | null;
  /** The close reason of the last socket (`forbidden`, `unavailable`, …). */
  readonly closeReason: string;
  /** Open the socket and keep it open; after `close()` or `"failed"`, starts anew. */
  connect(): void;
  /** Close the socket (1000) and stop reconnecting; pending publishes are rejected. */
  close(): void;
  /** Extra, for demos and tests: close the current socket (1000, "dropped") as a broken
   * connection would; the client reconnects and resumes by itself. */
  drop(): void;
  /** Publish one event; resolves with its ID once stored. Waits for an open socket; resent
   * after a reconnect with the same idempotency key, so stored once. Rejects with
   * `PublishFailed`. */
  publish(to: string, type: string, payload?: JsonValue): Promise<string>;
}
