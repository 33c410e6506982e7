// Unit tests of the browser app's pure modules (no browser needed): time
// formatting and the per-room de-duplication that makes reconnects lossless.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { formatTime, presenceText } from '../../static/js/views.js';
import { RoomState } from '../../static/js/state.js';
import { learnFacts, loadFacts, serverFacts } from '../../static/js/facts.js';

// Local time is what the page shows; pin the zone so the cases are exact.
process.env.TZ = 'UTC';

test('times read like "1:23 am"', () => {
  const at = (h, m) => Date.UTC(2026, 10, 26, h, m);
  assert.equal(formatTime(at(0, 5)), '12:05 am');
  assert.equal(formatTime(at(1, 23)), '1:23 am');
  assert.equal(formatTime(at(11, 59)), '11:59 am');
  assert.equal(formatTime(at(12, 0)), '12:00 pm');
  assert.equal(formatTime(at(13, 7)), '1:07 pm');
  assert.equal(formatTime(at(23, 30)), '11:30 pm');
  assert.equal(formatTime('not a time'), '');
});

test('a room keeps each seq once and in order, whatever order they arrive in', () => {
  const room = new RoomState('Chat Room');
  const m = (seq) => ({ seq, text: `m${seq}` });
  assert.deepEqual(room.accept([m(3), m(1), m(2)]).map((x) => x.seq), [1, 2, 3]);
  // A replay after a reconnect overlaps what is shown: only the new ones count.
  assert.deepEqual(room.accept([m(2), m(3), m(4)]).map((x) => x.seq), [4]);
  assert.equal(room.minSeq, 1);
  assert.equal(room.maxSeq, 4);
  // Frames without a numeric seq are ignored.
  assert.deepEqual(room.accept([{ text: 'x' }, null, m(5)]).map((x) => x.seq), [5]);
});

test('a rejoin resumes after what the room delivered, not after a `sent`', () => {
  const room = new RoomState('Chat Room');
  const m = (seq) => ({ seq, text: `m${seq}` });
  room.accept([m(1), m(2)]);
  // Our message 5 is confirmed by its `sent`, but 3 and 4 have not arrived
  // (a server closing us with 1013 drops them): it is shown, and a rejoin
  // still asks for everything after 2.
  assert.deepEqual(room.accept([m(5)], { delivered: false }).map((x) => x.seq), [5]);
  assert.equal(room.maxSeq, 2);
  // The room's own copy of it, after 3 and 4, moves the resume point.
  assert.deepEqual(room.accept([m(3), m(4), m(5)]).map((x) => x.seq), [3, 4]);
  assert.equal(room.maxSeq, 5);
});

test('presence frames apply their net change and report only real news', () => {
  const room = new RoomState('Chat Room');
  room.setUsers(['bob', 'alice']);
  assert.deepEqual(room.users, ['alice', 'bob']);
  assert.deepEqual(room.applyPresence({ joined: ['carol', 'Dave'], left: ['bob'] }),
    { arrived: ['carol', 'Dave'], gone: ['bob'] });
  assert.deepEqual(room.users, ['alice', 'carol', 'Dave']);
  // A frame restating what the list shows (sent to someone who joined
  // mid-interval) changes nothing and is no news.
  assert.deepEqual(room.applyPresence({ joined: ['carol'], left: ['bob'] }), { arrived: [], gone: [] });
  // Someone else under a name differing only in case: one goes, one comes.
  assert.deepEqual(room.applyPresence({ joined: ['DAVE'], left: ['Dave'] }), { arrived: ['DAVE'], gone: ['Dave'] });
  assert.deepEqual(room.users, ['alice', 'carol', 'DAVE']);
  // The older single-event form still works.
  room.applyPresence({ event: 'leave', user: 'carol' });
  assert.deepEqual(room.users, ['alice', 'DAVE']);
  room.applyPresence({ event: 'join', user: 'eve', users: ['alice', 'DAVE', 'eve'] });
  assert.deepEqual(room.users, ['alice', 'DAVE', 'eve']);
});

test('one line per presence frame, however many names', () => {
  assert.equal(presenceText(['bob'], 'joined'), 'bob has joined the chat');
  assert.equal(presenceText(['ann', 'bob'], 'left'), 'ann and bob have left the chat');
  assert.equal(presenceText(['ann', 'bob', 'cy'], 'joined'), 'ann, bob and 1 other have joined the chat');
  assert.equal(presenceText(['a', 'b', 'c', 'd'], 'left'), 'a, b and 2 others have left the chat');
});

test('the server\'s facts are taken field by field, and kept when an answer lacks one', async () => {
  assert.deepEqual(serverFacts(), {});
  learnFacts({
    bot: 'Test Bot', default_rooms: ['Lobby', 7, '', 'Den'], max_name_chars: 32, max_room_chars: 64,
    max_text_chars: 140, history_on_join: 0, history_max: 200, future_field: true,
  });
  assert.deepEqual(serverFacts(), {
    bot: 'Test Bot', defaultRooms: ['Lobby', 'Den'], maxNameChars: 32, maxRoomChars: 64,
    maxTextChars: 140, historyOnJoin: 0, historyMax: 200,
  });
  // Wrong types and missing fields change nothing; a later answer wins.
  learnFacts({ bot: 5, max_text_chars: -1, history_max: 1.5, default_rooms: 'Lobby' });
  learnFacts(null);
  assert.equal(serverFacts().bot, 'Test Bot');
  assert.equal(serverFacts().maxTextChars, 140);
  assert.equal(learnFacts({ max_text_chars: 500 }).maxTextChars, 500);
  // GET /api/info, and a server that cannot be reached.
  const seen = [];
  const answer = { ok: true, json: async () => ({ bot: 'Other Bot' }) };
  await loadFacts(async (url) => { seen.push(url); return answer; });
  assert.deepEqual(seen, ['/api/info']);
  assert.equal(serverFacts().bot, 'Other Bot');
  await loadFacts(async () => { throw new TypeError('offline'); });
  assert.equal(serverFacts().bot, 'Other Bot');
});
