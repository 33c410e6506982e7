// What the server says about itself: the name its bot's notices come from,
// its limits and its default rooms. Learnt from `GET /api/info` when the
// page opens (the join page has no socket yet) and again from every
// `welcome` (its `server` field). The app keeps no copy of these facts: a
// server started with other `--rooms` is followed as it is.
//
// Owns: the facts learnt so far, checked field by field. A field missing
// or of the wrong type stays unknown, and the code that reads it does
// without (no limit shown, no default rooms offered). No DOM, no socket.

/**
 * The facts learnt so far; each may be undefined:
 * `bot` (string), `defaultRooms` (string[]), `maxNameChars`, `maxRoomChars`,
 * `maxTextChars`, `historyOnJoin`, `historyMax` (integers, 0 or more),
 * `guests` (boolean: whether people may chat without an account).
 */
const known = {};

const count = (value) => (Number.isSafeInteger(value) && value >= 0 ? value : undefined);

/** The facts learnt so far (see `known`). */
export function serverFacts() {
  return known;
}

/**
 * Takes the facts from a `welcome`'s `server` object or the body of
 * `GET /api/info` (the same shape, docs/protocol.md). A field the answer
 * lacks keeps what an earlier answer said. Returns the facts.
 */
export function learnFacts(raw) {
  if (raw === null || typeof raw !== 'object') return known;
  const heard = {
    bot: typeof raw.bot === 'string' && raw.bot !== '' ? raw.bot : undefined,
    defaultRooms: Array.isArray(raw.default_rooms)
      ? raw.default_rooms.filter((room) => typeof room === 'string' && room !== '')
      : undefined,
    maxNameChars: count(raw.max_name_chars),
    maxRoomChars: count(raw.max_room_chars),
    maxTextChars: count(raw.max_text_chars),
    historyOnJoin: count(raw.history_on_join),
    historyMax: count(raw.history_max),
    guests: typeof raw.guests === 'boolean' ? raw.guests : undefined,
  };
  for (const [key, value] of Object.entries(heard)) {
    if (value !== undefined) known[key] = value;
  }
  return known;
}

/**
 * Asks the server for its facts. Resolves with what is known afterwards:
 * an unreachable server leaves them unknown until a `welcome` brings them.
 */
export async function loadFacts(fetchImpl = globalThis.fetch) {
  try {
    const response = await fetchImpl('/api/info', { headers: { Accept: 'application/json' } });
    if (response.ok) learnFacts(await response.json());
  } catch {
    // Offline or not JSON: the welcome brings the same facts.
  }
  return known;
}
