// What the client knows about the room it is in.
//
// Owns: which message seqs are already shown (so replays after a reconnect or
// overlapping history pages are ignored), the oldest and newest seq (for
// `history.before` and `join.since`), whether older history may exist, and
// the users list. Pure data: no DOM, no socket.

/** How many messages one history page asks for (the server's join default too). */
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
   */
  accept(messages) {
    const fresh = [];
    for (const message of messages) {
      if (!message || !Number.isInteger(message.seq) || this.seqs.has(message.seq)) continue;
      this.seqs.add(message.seq);
      fresh.push(message);
      if (this.minSeq === null || message.seq < this.minSeq) this.minSeq = message.seq;
      if (this.maxSeq === null || message.seq > this.maxSeq) this.maxSeq = message.seq;
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
   * Applies one presence event. The server's `users` list is authoritative:
   * it is computed when the event happens and the server never delivers an
   * older list after a newer one. Only if it is missing is the change
   * applied by hand.
   */
  applyPresence(event, user, users) {
    if (Array.isArray(users)) {
      this.setUsers(users);
      return;
    }
    if (typeof user !== 'string' || user === '') return;
    if (event === 'join' && !this.users.includes(user)) {
      this.setUsers([...this.users, user]);
    } else if (event === 'leave') {
      this.users = this.users.filter((u) => u !== user);
    }
  }

  hasUser(name) {
    return this.users.includes(name);
  }
}
