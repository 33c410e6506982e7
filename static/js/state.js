// What the client knows about the room it is in.
//
// Owns: which message seqs are already shown (so replays after a reconnect or
// overlapping history pages are ignored), the oldest and newest seq (for
// `history.before` and `join.since`), whether older history may exist, and
// the users list; and the messages typed but not yet confirmed. Pure data:
// no DOM, no socket.

/** How many messages one history page asks for (the server may allow fewer: `history_max`). */
export const PAGE_SIZE = 50;

export class RoomState {
  constructor(name) {
    this.name = name;
    this.users = [];
    this.seqs = new Set();
    this.minSeq = null;
    this.maxSeq = null;
    this.hasOlder = false;
    this.loadingOlder = false;
    this.welcomed = false;
  }

  /**
   * Records `messages` and returns the ones not seen before, sorted by seq.
   * Anything without a numeric seq is dropped: order is defined by seq alone.
   * `maxSeq`, where a rejoin resumes, moves only for messages the room
   * `delivered` (live, in `joined` or `history`), which arrive in seq order:
   * a `sent` may name a seq past messages a server closing the connection
   * (1013) never wrote.
   */
  accept(messages, { delivered = true } = {}) {
    const fresh = [];
    for (const message of messages) {
      if (!message || !Number.isInteger(message.seq)) continue;
      if (delivered && (this.maxSeq === null || message.seq > this.maxSeq)) this.maxSeq = message.seq;
      if (this.seqs.has(message.seq)) continue;
      this.seqs.add(message.seq);
      fresh.push(message);
      if (this.minSeq === null || message.seq < this.minSeq) this.minSeq = message.seq;
    }
    fresh.sort((a, b) => a.seq - b.seq);
    return fresh;
  }

  /** Forgets every message (used when a catch-up was truncated and left a gap). */
  clearMessages() {
    this.seqs.clear();
    this.minSeq = null;
    this.maxSeq = null;
  }

  setUsers(users) {
    if (Array.isArray(users)) {
      this.users = users.filter((u) => typeof u === 'string');
      this.users.sort((a, b) => a.localeCompare(b));
    }
  }

  /**
   * Applies one presence frame: the names in `left` go, then those in
   * `joined` come (the server sends the full list only in `joined`, then
   * the net change of each interval). A frame may restate what the list
   * already shows, so this returns the names that really arrived and went,
   * for the notices: `{ arrived, gone }`. Frames of the older single-event
   * form (`event`, `user`, maybe a full `users`) are understood too.
   */
  applyPresence(frame) {
    const names = (list) => (Array.isArray(list) ? list.filter((u) => typeof u === 'string' && u !== '') : []);
    let joined = names(frame.joined);
    let left = names(frame.left);
    if (!Array.isArray(frame.joined) && !Array.isArray(frame.left)) {
      if (Array.isArray(frame.users)) {
        const users = names(frame.users);
        joined = users.filter((u) => !this.users.includes(u));
        left = this.users.filter((u) => !users.includes(u));
      } else if (typeof frame.user === 'string' && frame.user !== '') {
        if (frame.event === 'join') joined = [frame.user];
        if (frame.event === 'leave') left = [frame.user];
      }
    }
    const gone = left.filter((u) => this.users.includes(u));
    const remaining = this.users.filter((u) => !left.includes(u));
    const arrived = [...new Set(joined)].filter((u) => !remaining.includes(u));
    this.setUsers([...remaining, ...arrived]);
    // A name that went and came back in one frame is no news.
    return {
      arrived: arrived.filter((u) => !gone.includes(u)),
      gone: gone.filter((u) => !arrived.includes(u)),
    };
  }
}

/**
 * A fresh nonce for a `send`: a random UUID. `crypto.randomUUID` exists only
 * in secure contexts (https, localhost); a page served over plain http on
 * another host builds one from `getRandomValues`, which exists everywhere.
 */
export function newNonce(cryptoApi = globalThis.crypto) {
  if (typeof cryptoApi.randomUUID === 'function') return cryptoApi.randomUUID();
  const bytes = cryptoApi.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Messages typed and not yet confirmed by the server, oldest first. Each
 * keeps the nonce it was given when typed for as long as it waits: the
 * server stores a message at most once per nonce, so sending it again after
 * a lost connection — when nobody can know whether the first try was
 * stored — never makes a second copy.
 */
export class PendingMessages {
  constructor() {
    this.entries = [];
  }

  /** Queues `text`; returns its entry ({nonce, text, attempted, ...extra}). */
  add(text, extra = {}) {
    const entry = { ...extra, nonce: newNonce(), text, attempted: false };
    this.entries.push(entry);
    return entry;
  }

  get head() {
    return this.entries[0];
  }

  get size() {
    return this.entries.length;
  }

  /** Forgets `entry` (confirmed, or refused for good). */
  remove(entry) {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
  }
}
