// One WebSocket to the ChatterPro server, kept alive across network hiccups.
//
// Owns: opening the socket, reconnecting with capped exponential backoff,
// numbering requests with `ref` and matching replies to them. It knows the
// wire format (one JSON object per text frame) but nothing about rooms or the
// DOM: main.js listens to its events and decides what each message means.
//
// Events (all CustomEvent, payload in `detail`):
//   "open"   – a socket is open; the owner must (re)do hello + join.
//   "push"   – a server message that is not a reply to one of our requests.
//   "closed" – the socket closed; detail = {code, reason, willReconnect, delayMs}.

/** The server closed the socket because its account session was signed out. */
export const SIGNED_OUT_CLOSE = 4001;

/**
 * Close codes after which reconnecting cannot help (policy, unsupported or
 * oversized data, a signed-out session: a new socket would be a guest's).
 */
export const FATAL_CLOSE_CODES = new Set([1003, 1008, 1009, SIGNED_OUT_CLOSE]);

const BACKOFF_START_MS = 300;
const BACKOFF_CAP_MS = 5000;
const REQUEST_TIMEOUT_MS = 10000;

/** An error reply from the server, or a local failure with a synthetic code. */
export class RequestError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'RequestError';
    this.code = code;
    Object.assign(this, extra);
  }
}

/** The WebSocket URL of the server that served this page. */
export function defaultSocketUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

/**
 * Delay before reconnect attempt number `attempt` (0-based): doubles from
 * BACKOFF_START_MS up to BACKOFF_CAP_MS. Jitter keeps many clients that lost
 * the same server from all knocking at the same instant when it comes back.
 */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * 2 ** attempt);
  return Math.round(base * (0.75 + random() * 0.5));
}

export class Connection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.socket = null;
    this.nextRef = 1;
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.attempt = 0;
    this.reconnectTimer = null;
    this.stopped = false;
  }

  /** Opens the first socket. Reconnects happen by themselves until close(). */
  start() {
    this.stopped = false;
    this.open();
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  /** Call once the session is usable again, so the next outage starts with short waits. */
  resetBackoff() {
    this.attempt = 0;
  }

  /**
   * Sends `message` with a fresh ref and resolves with the reply carrying the
   * same ref. An `error` reply rejects with a RequestError holding its code.
   */
  request(message, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (!this.isOpen) {
      return Promise.reject(new RequestError('offline', 'Not connected to the server.'));
    }
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new RequestError('timeout', 'The server did not answer in time.'));
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...message, ref }));
    });
  }

  /** Closes for good (the user left): no reconnect follows. */
  close(code = 1000, reason = 'client leaving') {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.socket) {
      const socket = this.socket;
      this.detach(socket);
      socket.close(code, reason);
    }
    this.failPending('closed', 'The connection was closed.');
  }

  /** Drops the current socket but keeps the session: a reconnect follows after backoff. */
  drop() {
    if (this.socket) {
      this.socket.close(4000, 'client retry');
    }
  }

  open() {
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (err) {
      this.handleClose(1006, String(err));
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.dispatchEvent(new CustomEvent('open'));
    };
    socket.onmessage = (event) => this.handleFrame(event.data);
    socket.onclose = (event) => {
      if (this.socket === socket) {
        this.detach(socket);
        this.handleClose(event.code, event.reason);
      }
    };
    // Errors are always followed by a close event, which does the work.
    socket.onerror = () => {};
  }

  detach(socket) {
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (this.socket === socket) this.socket = null;
  }

  handleFrame(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn('ChatterPro: ignoring a frame that is not JSON');
      return;
    }
    if (message === null || typeof message !== 'object' || typeof message.type !== 'string') {
      return;
    }
    const waiter = message.ref !== undefined ? this.pending.get(message.ref) : undefined;
    if (waiter) {
      this.pending.delete(message.ref);
      clearTimeout(waiter.timer);
      if (message.type === 'error') {
        waiter.reject(new RequestError(message.code, message.message, {
          retryAfterMs: message.retry_after_ms,
        }));
      } else {
        waiter.resolve(message);
      }
      return;
    }
    this.dispatchEvent(new CustomEvent('push', { detail: message }));
  }

  handleClose(code, reason) {
    this.failPending('offline', 'The connection was lost.');
    const willReconnect = !this.stopped && !FATAL_CLOSE_CODES.has(code);
    let delayMs = 0;
    if (willReconnect) {
      delayMs = backoffDelay(this.attempt);
      this.attempt += 1;
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        if (!this.stopped) this.open();
      }, delayMs);
    } else {
      this.stopped = true;
    }
    this.dispatchEvent(new CustomEvent('closed', {
      detail: { code, reason, willReconnect, delayMs },
    }));
  }

  failPending(code, text) {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new RequestError(code, text));
    }
    this.pending.clear();
  }
}
