// Wiring: the join page, the chat session and the user's actions.
//
// Owns: the flow hello -> welcome -> join -> joined (again after every
// reconnect, with `since` so only missed messages come back), the outgoing
// messages (shown "sending…" until confirmed, resent with their nonces after
// a reconnect), history paging, the remembered identity and the account
// (sign in, sign up, sign out over "Accounts over HTTP"; a signed-in socket
// says `hello` without a name). Talks to the server only through
// connection.js and fetch, and to the page only through views.js.

import { Connection, RequestError, SIGNED_OUT_CLOSE, defaultSocketUrl } from './connection.js';
import { learnFacts, loadFacts, serverFacts } from './facts.js';
import { PAGE_SIZE, PendingMessages, RoomState } from './state.js';
import * as views from './views.js';

const { $ } = views;
const IDENTITY_KEY = 'chatterpro.identity';
/** The room a signed-in page was last in: a reload goes back to it. */
const ROOM_KEY = 'chatterpro.room';
const SIGNED_OUT_TEXT = 'You were signed out.';
/** Handshake errors worth another try after a reconnect (a server restarting, a stale login). */
const RETRYABLE_CODES = new Set(['offline', 'timeout', 'closed', 'internal', 'rate_limited', 'name_taken']);
const MAX_HANDSHAKE_RETRIES = 8;
/** After a reconnect, people who were here and come back within this window rejoin silently. */
const PRESENCE_GRACE_MS = 30000;

const ERROR_TEXT = {
  invalid_name: 'That nickname is not allowed.',
  name_taken: 'That nickname is already in use. Please pick another one.',
  invalid_room: 'That room name is not allowed.',
  get too_large() {
    const max = serverFacts().maxTextChars;
    return max !== undefined ? `That message is too long (${max} characters at most).` : 'That message is too long.';
  },
  rate_limited: 'You are sending too fast. Please wait a moment.',
  offline: 'Could not reach the ChatterPro server. Please try again.',
  timeout: 'The server did not answer in time. Please try again.',
};

function describe(error) {
  if (error instanceof RequestError) {
    return error.message && error.message !== error.code
      ? error.message
      : ERROR_TEXT[error.code] ?? `Something went wrong (${error.code}).`;
  }
  return 'Something went wrong. Please try again.';
}

function joinErrorText(error) {
  // Our own wording for the common cases; the server's detail where it explains a rule.
  if (!(error instanceof RequestError) || !ERROR_TEXT[error.code]) return describe(error);
  const detail = error.message && error.message !== error.code ? error.message : '';
  if (detail && error.code.startsWith('invalid_')) return `${ERROR_TEXT[error.code]} ${detail}`;
  return ERROR_TEXT[error.code];
}

// ---------------------------------------------------------------- server facts

/** Fits the page to the server's facts: its limits become the inputs' limits. */
function applyFacts(facts) {
  const input = $('message-input');
  if (facts.maxTextChars !== undefined) {
    input.maxLength = facts.maxTextChars;
  } else {
    input.removeAttribute('maxlength');
  }
  showGuestForm();
}

/** The guest form: for someone not signed in, on a server that has guests. */
function showGuestForm() {
  $('join-form').hidden = account !== null || serverFacts().guests === false;
}

/**
 * Whether a room may have messages older than the `count` a join without
 * `since` returned: the server sends at most `history_on_join`, so fewer
 * means it has no more. Not knowing that number, asking once costs little.
 */
function mayHaveOlder(count) {
  const page = serverFacts().historyOnJoin;
  return page !== undefined ? count >= page : count > 0;
}

/** How many messages to ask for per history page: ours, within the server's maximum. */
function historyPageSize() {
  return Math.max(1, Math.min(PAGE_SIZE, serverFacts().historyMax ?? PAGE_SIZE));
}

// ---------------------------------------------------------------- identity

function loadIdentity() {
  try {
    const stored = JSON.parse(localStorage.getItem(IDENTITY_KEY) ?? 'null');
    if (stored && typeof stored.name === 'string' && typeof stored.session === 'string') return stored;
  } catch {
    // A corrupt entry is as good as none.
  }
  return null;
}

function saveIdentity(name, session) {
  if (typeof session !== 'string') return;
  try {
    localStorage.setItem(IDENTITY_KEY, JSON.stringify({ name, session }));
  } catch {
    // Storage may be full or disabled; reclaiming the name is a convenience.
  }
}

function loadRoom() {
  try {
    return localStorage.getItem(ROOM_KEY) || null;
  } catch {
    return null;
  }
}

function saveRoom(name) {
  try {
    localStorage.setItem(ROOM_KEY, name);
  } catch {
    // Going back to the same room after a reload is a convenience.
  }
}

// ---------------------------------------------------------------- account

/** `{name, admin}` while this browser holds a valid session cookie, else null. */
let account = null;

/**
 * One JSON request of "Accounts over HTTP". Resolves with the body (null for
 * 204); a refusal rejects with a RequestError holding the server's code and
 * its message, which is written for people.
 */
async function accountRequest(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new RequestError('offline', ERROR_TEXT.offline);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // A proxy's error page, say: the status alone tells.
  }
  if (!response.ok) {
    const error = data && typeof data.error === 'object' ? data.error : {};
    throw new RequestError(
      typeof error.code === 'string' ? error.code : `http_${response.status}`,
      typeof error.message === 'string' ? error.message : `The server answered with HTTP ${response.status}.`,
    );
  }
  return data;
}

function setAccount(value) {
  account = value && typeof value.name === 'string' ? { name: value.name, admin: value.admin === true } : null;
  $('signed-in').hidden = account === null;
  $('signed-in-name').textContent = account ? account.name : '';
  $('account-form').hidden = account !== null;
  showGuestForm();
  $('account-box').hidden = account === null;
  $('account-label').textContent = account ? account.name : '';
}

// ---------------------------------------------------------------- session

/** Everything belonging to one stay in one room; replaced on every join. */
let session = null;

/** `name` null: the stay of the signed-in account, whose socket carries the cookie. */
function createSession(name, roomName) {
  return {
    conn: new Connection(defaultSocketUrl()),
    name,
    asAccount: name === null,
    signingOut: false,
    requestedRoom: roomName,
    room: null,
    joined: false, // true once the first join succeeded
    ready: false, // true while a join is complete on the current socket
    buffered: [], // pushes that arrived while (re)joining
    handshakeFailures: 0,
    outbox: new PendingMessages(), // typed, not yet confirmed, in order
    sending: false,
    graceUsers: new Set(),
    graceUntil: 0,
    ended: false,
  };
}

async function handshake(s) {
  const hello = { type: 'hello' };
  if (!s.asAccount) {
    hello.name = s.name;
    const stored = loadIdentity();
    if (stored && stored.name === s.name) hello.session = stored.session;
  }
  let welcome;
  try {
    welcome = await s.conn.request(hello);
  } catch (error) {
    // Without a valid cookie the socket is a guest's, and a guest must name itself.
    if (s.asAccount && (error.code === 'bad_request' || error.code === 'no_identity')) {
      throw new RequestError('signed_out', SIGNED_OUT_TEXT);
    }
    throw error;
  }
  s.name = typeof welcome.name === 'string' ? welcome.name : s.name;
  if (s.asAccount && welcome.account !== true) {
    // The cookie did not count (it expired, or was revoked just now).
    throw new RequestError('signed_out', SIGNED_OUT_TEXT);
  }
  // Our identity, given to our own messages as `sent` confirms them (the
  // server's `message` copies carry it too): names two people used are tagged.
  s.author = Number.isSafeInteger(welcome.author) ? welcome.author : undefined;
  // An account's `session` is empty: the cookie proves who it is.
  if (!s.asAccount) saveIdentity(s.name, welcome.session);
  applyFacts(learnFacts(welcome.server));

  const join = { type: 'join', room: s.room ? s.room.name : s.requestedRoom };
  if (s.room && s.room.maxSeq !== null) join.since = s.room.maxSeq;
  return s.conn.request(join);
}

/** First join from the join page. Resolves when the chat view is showing. */
function startSession(name, roomName) {
  const s = createSession(name, roomName);
  session = s;
  return new Promise((resolve, reject) => {
    const fail = (error) => {
      if (s.joined) return;
      s.ended = true;
      s.conn.close();
      if (session === s) session = null;
      reject(error);
    };
    s.conn.addEventListener('push', (event) => onPush(s, event.detail));
    s.conn.addEventListener('closed', (event) => {
      if (event.detail.code === SIGNED_OUT_CLOSE) {
        // Signed out, here or in another tab: a new socket would be a guest's.
        if (s.signingOut) return; // signOut() finishes the job
        if (!s.joined) {
          fail(new RequestError('signed_out', SIGNED_OUT_TEXT));
        } else {
          endStay(s);
          setAccount(null);
          showJoinPage({ notice: SIGNED_OUT_TEXT });
        }
        return;
      }
      if (!s.joined) {
        fail(new RequestError('offline', ERROR_TEXT.offline));
      } else {
        onConnectionLost(s, event.detail);
      }
    });
    s.conn.addEventListener('open', () => {
      if (!s.joined) {
        handshake(s).then((joined) => {
          s.joined = true;
          enterChat(s, joined);
          resolve();
        }, fail);
      } else {
        rejoin(s);
      }
    });
    s.conn.start();
  });
}

function enterChat(s, joined) {
  const room = new RoomState(typeof joined.room === 'string' ? joined.room : s.requestedRoom);
  s.room = room;
  room.setUsers(joined.users);
  const list = $('messages');
  list.replaceChildren();
  $('room-name').textContent = room.name;
  views.renderUsers($('users'), room.users, s.name);
  views.showError($('chat-error'), '');
  $('message-input').value = '';
  views.showView('chat');
  document.title = `${room.name} · ChatterPro`;
  if (s.asAccount) saveRoom(room.name);

  const messages = Array.isArray(joined.messages) ? joined.messages : [];
  for (const message of room.accept(messages)) {
    list.append(views.messageItem(message, s.name));
  }
  views.markSharedNames(list);
  room.hasOlder = mayHaveOlder(messages.length);
  markReady(s);
  views.scrollToBottom(list);
  $('message-input').focus();
  fillViewportWithHistory(s);
}

function rejoin(s) {
  handshake(s).then(async (joined) => {
    if (session !== s || s.ended) return;
    s.handshakeFailures = 0;
    // What went out on the lost socket unconfirmed goes again first, with its
    // nonce: stored then or stored now, each comes back with its seq, so the
    // catch-up below finds that seq taken and the message shows once.
    await pumpOutbox(s, { resending: true });
    if (session !== s || s.ended || !s.conn.isOpen) return; // the next reconnect takes over
    const room = s.room;
    const list = $('messages');
    const stick = views.isNearBottom(list);

    s.graceUsers = new Set(room.users);
    s.graceUntil = Date.now() + PRESENCE_GRACE_MS;
    room.setUsers(joined.users);
    views.renderUsers($('users'), room.users, s.name);

    const messages = Array.isArray(joined.messages) ? joined.messages : [];
    if (joined.truncated) {
      // More was missed than the server replays: start over from its latest
      // page, the gap stays reachable by scrolling up.
      room.clearMessages();
      list.replaceChildren(views.eventNoticeItem('Some messages were skipped while you were away. Scroll up to read them.', 'info'));
      for (const entry of s.outbox.entries) list.append(entry.item);
      room.hasOlder = true;
    }
    const fresh = room.accept(messages);
    for (const message of fresh) {
      views.insertBySeq(list, views.messageItem(message, s.name), message.seq);
    }
    views.markSharedNames(list);
    if (stick) views.scrollToBottom(list);
    s.conn.resetBackoff();
    markReady(s);
  }, (error) => {
    if (session !== s || s.ended) return;
    if (error.code === 'signed_out') {
      endStay(s);
      setAccount(null);
      showJoinPage({ notice: SIGNED_OUT_TEXT });
      return;
    }
    s.handshakeFailures += 1;
    if (RETRYABLE_CODES.has(error.code) && s.handshakeFailures <= MAX_HANDSHAKE_RETRIES) {
      s.conn.drop(); // the close handler schedules the next attempt
    } else {
      s.conn.close();
      views.setStatus('disconnected');
      views.showError($('chat-error'), `Could not rejoin the room: ${describe(error)} Leave and join again.`);
    }
  });
}

function markReady(s) {
  s.ready = true;
  views.setStatus('connected');
  views.showError($('chat-error'), '');
  const buffered = s.buffered;
  s.buffered = [];
  for (const message of buffered) onPush(s, message);
  pumpOutbox(s);
}

function onConnectionLost(s, { code, reason, willReconnect }) {
  if (session !== s || s.ended) return;
  s.ready = false;
  if (willReconnect) {
    views.setStatus('reconnecting');
  } else {
    views.setStatus('disconnected');
    const why = reason ? `: ${reason}` : '';
    views.showError($('chat-error'), `The server closed the connection (code ${code}${why}). Leave and join again.`);
  }
}

// ---------------------------------------------------------------- server pushes

function onPush(s, message) {
  if (session !== s || s.ended) return;
  if (!s.ready) {
    s.buffered.push(message);
    return;
  }
  const room = s.room;
  if (typeof message.room === 'string' && message.room !== room.name) return;
  const list = $('messages');
  const stick = views.isNearBottom(list);

  switch (message.type) {
    case 'message': {
      const [fresh] = room.accept([message]);
      if (!fresh) return;
      views.insertBySeq(list, views.messageItem(fresh, s.name), fresh.seq);
      views.markSharedNames(list);
      if (stick || fresh.from === s.name) views.scrollToBottom(list);
      return;
    }
    case 'notice': {
      const text = String(message.text ?? '');
      // By its kind, never its text: operators word the welcome (`--welcome`).
      const isWelcome = message.kind === 'welcome';
      if (isWelcome && room.welcomed) return; // not again after each reconnect
      if (isWelcome) room.welcomed = true;
      list.append(views.botNoticeItem(text, message.ts, serverFacts().bot));
      break;
    }
    case 'presence': {
      const { arrived, gone } = room.applyPresence(message);
      if (arrived.length === 0 && gone.length === 0) return;
      views.renderUsers($('users'), room.users, s.name);
      const now = Date.now();
      // People seen before a reconnect who are back within the grace period.
      const fresh = arrived.filter((user) => !(s.graceUsers.delete(user) && now < s.graceUntil));
      if (fresh.length > 0) views.addPresenceNotice(list, fresh, 'joined');
      if (gone.length > 0) views.addPresenceNotice(list, gone, 'left');
      break;
    }
    case 'error': {
      views.showError($('chat-error'), describe(new RequestError(message.code, message.message)));
      return;
    }
    case 'left': {
      // Not a reply to our own `leave` (those carry a ref): the server took
      // us out because the room was removed. Its notice came just before.
      closeRoom(s, `The room “${room.name}” was removed. Pick another one.`);
      return;
    }
    default:
      return; // welcome, rooms and future types need nothing here
  }
  if (stick) views.scrollToBottom(list);
}

// ---------------------------------------------------------------- sending

/** Shows `text` at once as "sending…" and queues it, with a nonce of its own. */
function queueMessage(s, text) {
  const entry = s.outbox.add(text, { item: views.pendingMessageItem(text, s.name) });
  const list = $('messages');
  list.append(entry.item);
  views.scrollToBottom(list);
  pumpOutbox(s);
}

/**
 * Sends queued messages one at a time so they keep their order, waiting out
 * rate limits. A message whose reply is lost (the socket closed, the server
 * did not answer in time) stays queued and goes again with the same nonce:
 * the server answers a resend with the first copy's `sent` and stores
 * nothing. With `resending` (during a rejoin), sends only the messages that
 * already went out once, and stops at the first that did not.
 */
async function pumpOutbox(s, { resending = false } = {}) {
  if (s.sending) return;
  s.sending = true;
  try {
    for (;;) {
      const entry = s.outbox.head;
      if (!entry || session !== s || s.ended) return;
      if (resending ? !entry.attempted : !s.ready) return;
      entry.attempted = true;
      try {
        const sent = await s.conn.request({
          type: 'send', room: s.room.name, text: entry.text, nonce: entry.nonce,
        });
        s.outbox.remove(entry);
        confirmSent(s, entry, sent);
      } catch (error) {
        if (error.code === 'rate_limited') {
          const wait = Number.isFinite(error.retryAfterMs) ? error.retryAfterMs : 1000;
          await new Promise((resolve) => setTimeout(resolve, Math.max(50, wait)));
        } else if (error.code === 'offline' || error.code === 'closed') {
          return; // resent with its nonce once the room is rejoined
        } else if (error.code !== 'timeout') {
          // Refused for good (too long, not a member…): back to the message box.
          s.outbox.remove(entry);
          entry.item.remove();
          restoreDraft(entry.text);
          views.showError($('chat-error'), describe(error));
        }
        // After a timeout the same nonce goes again: it cannot be stored twice.
      }
    }
  } finally {
    s.sending = false;
  }
}

/**
 * The server stored a message of ours (now or on an earlier try): its
 * "sending…" item becomes the message, in seq order — unless that seq is
 * shown already (its copy came first, e.g. in a catch-up), then it just goes.
 */
function confirmSent(s, entry, sent) {
  const room = s.room;
  entry.item.remove();
  if (!room || sent.room !== room.name || !Number.isInteger(sent.seq)) return;
  const [fresh] = room.accept([{
    room: sent.room, id: sent.id, seq: sent.seq, ts: sent.ts, from: s.name, author: s.author, text: entry.text.trim(),
  }], { delivered: false });
  if (!fresh) return;
  const list = $('messages');
  const stick = views.isNearBottom(list);
  views.insertBySeq(list, views.messageItem(fresh, s.name), fresh.seq);
  views.markSharedNames(list);
  if (stick) views.scrollToBottom(list);
}

function restoreDraft(text) {
  const input = $('message-input');
  if (input.value === '') {
    input.value = text;
    views.autosize(input);
  }
}

// ---------------------------------------------------------------- history

async function loadOlder(s) {
  const room = s.room;
  if (!room || !room.hasOlder || room.loadingOlder || !s.ready || room.minSeq === null) return;
  room.loadingOlder = true;
  const limit = historyPageSize();
  try {
    const reply = await s.conn.request({
      type: 'history', room: room.name, before: room.minSeq, limit,
    });
    if (session !== s) return;
    const messages = Array.isArray(reply.messages) ? reply.messages : [];
    room.hasOlder = messages.length >= limit;
    const fresh = room.accept(messages);
    if (fresh.length > 0) {
      views.prependKeepingScroll($('messages'), fresh.map((m) => views.messageItem(m, s.name)));
      views.markSharedNames($('messages'));
    }
  } catch (error) {
    if (error.code !== 'offline' && error.code !== 'closed') {
      views.showError($('chat-error'), describe(error));
    }
  } finally {
    room.loadingOlder = false;
  }
  fillViewportWithHistory(s);
}

/** With a tall window the list may not scroll at all; then fetch until it does. */
function fillViewportWithHistory(s) {
  const list = $('messages');
  if (s.room && s.room.hasOlder && list.scrollHeight <= list.clientHeight) loadOlder(s);
}

// ---------------------------------------------------------------- join page

/** The server's facts, asked for once when the page opens (see init). */
let factsLoaded = Promise.resolve(serverFacts());

/**
 * Fills the room picker from `GET /api/rooms`. Without an answer (the
 * server cannot build its list, say while storage is down) a list shown
 * before stays; with none shown yet, it offers the server's default rooms,
 * from `GET /api/info`.
 */
async function refreshRooms() {
  const select = $('room-select');
  const listed = () => [...select.options].some((option) => option.value !== '');
  try {
    const response = await fetch('/api/rooms', { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    if (!Array.isArray(body.rooms)) throw new Error('no rooms');
    views.renderRoomOptions(select, body.rooms.filter((r) => r && typeof r.name === 'string'));
  } catch {
    if (listed()) return;
    const { defaultRooms = [] } = await factsLoaded;
    if (!listed()) views.renderRoomOptions(select, defaultRooms.map((name) => ({ name })));
  }
}

/**
 * How often the join page asks for the room list again while it is shown:
 * counts change and rooms come and go (the server builds its list at most
 * once a second, so a page opened just before a room got its first message
 * would otherwise never offer it).
 */
const ROOM_LIST_POLL_MS = 5000;
let roomListPoll = null;

/** The join page; `notice` says why we are back on it (empty: nothing to say). */
function showJoinPage({ notice = '' } = {}) {
  views.showView('join');
  const noticeBox = $('join-notice');
  noticeBox.textContent = notice;
  noticeBox.hidden = !notice;
  document.title = 'ChatterPro';
  $('join-button').disabled = false;
  refreshRooms();
  clearInterval(roomListPoll);
  roomListPoll = setInterval(() => {
    if ($('join-view').hidden) {
      clearInterval(roomListPoll);
    } else if (!document.hidden) {
      refreshRooms();
    }
  }, ROOM_LIST_POLL_MS);
  (account ? $('enter-button') : $('nickname')).focus();
}

/** The room the join page's fields name: a typed new room wins over the picker. */
function chosenRoom() {
  return $('new-room').value.trim() || $('room-select').value;
}

async function onJoinSubmit(event) {
  event.preventDefault();
  const errorBox = $('join-error');
  const button = $('join-button');
  const name = $('nickname').value.trim();
  const roomName = chosenRoom();
  if (account) {
    // Enter in the room fields while signed in (they belong to this form).
    enterAsAccount(roomName);
    return;
  }
  if (!name) {
    views.showError(errorBox, 'Please choose a nickname.');
    $('nickname').focus();
    return;
  }
  if (!roomName) {
    views.showError(errorBox, 'Please pick a room or type a name for a new one.');
    return;
  }
  views.showError(errorBox, '');
  button.disabled = true;
  views.setStatus('connecting');
  try {
    await startSession(name, roomName);
    $('new-room').value = '';
    $('room-select').disabled = false;
  } catch (error) {
    views.showError(errorBox, joinErrorText(error));
    const field = error.code === 'invalid_room' ? $('new-room') : $('nickname');
    field.focus();
  } finally {
    button.disabled = false;
  }
}

/**
 * Goes to the chat as the signed-in account in `roomName`. On failure stays
 * on (or comes back to) the join page, saying why.
 */
async function enterAsAccount(roomName) {
  const errorBox = $('join-error');
  if (!roomName) {
    views.showError(errorBox, 'Please pick a room or type a name for a new one.');
    return;
  }
  views.showError(errorBox, '');
  $('enter-button').disabled = true;
  views.setStatus('connecting');
  try {
    await startSession(null, roomName);
    $('new-room').value = '';
    $('room-select').disabled = false;
  } catch (error) {
    if (error.code === 'signed_out') {
      setAccount(null);
      showJoinPage({ notice: SIGNED_OUT_TEXT });
    } else {
      showJoinPage();
      views.showError(errorBox, joinErrorText(error));
    }
  } finally {
    $('enter-button').disabled = false;
  }
}

/** "Sign in" or "Create account" (whichever button submitted the form). */
async function onAccountSubmit(event) {
  event.preventDefault();
  const errorBox = $('join-error');
  const creating = event.submitter?.value === 'signup';
  const name = $('account-name').value.trim();
  const password = $('account-password').value;
  const roomName = chosenRoom();
  if (!name || !password) {
    views.showError(errorBox, 'Please enter your name and password.');
    (name ? $('account-password') : $('account-name')).focus();
    return;
  }
  if (!roomName) {
    views.showError(errorBox, 'Please pick a room or type a name for a new one.');
    return;
  }
  views.showError(errorBox, '');
  const buttons = [$('signin-button'), $('signup-button')];
  for (const button of buttons) button.disabled = true;
  let reply;
  try {
    reply = await accountRequest('POST', creating ? '/api/accounts' : '/api/session', { name, password });
  } catch (error) {
    views.showError(errorBox, describe(error));
    (error.code === 'weak_password' || error.code === 'bad_credentials' ? $('account-password') : $('account-name')).focus();
    return;
  } finally {
    for (const button of buttons) button.disabled = false;
  }
  $('account-password').value = '';
  setAccount({ name, ...reply });
  await enterAsAccount(roomName);
}

/** Signs this browser's session out; the server closes its sockets (4001) in every tab. */
async function signOut() {
  const s = session;
  if (s) s.signingOut = true;
  try {
    await accountRequest('DELETE', '/api/session');
  } catch (error) {
    if (error.code !== 'not_signed_in') {
      if (s) s.signingOut = false;
      views.showError($(s ? 'chat-error' : 'join-error'), `Could not sign out: ${describe(error)}`);
      return;
    }
  }
  if (s) endStay(s);
  setAccount(null);
  showJoinPage();
}

/** Ends a stay for good, without a word to the server. */
function endStay(s) {
  s.ended = true;
  if (session === s) session = null;
  s.conn.close(1000, 'left');
  $('messages').replaceChildren();
  $('users').replaceChildren();
}

/** Ends a stay the server ended: back to the join page, saying why. */
function closeRoom(s, reason) {
  s.ended = true;
  if (session === s) session = null;
  s.conn.close(1000, 'left');
  $('messages').replaceChildren();
  $('users').replaceChildren();
  showJoinPage();
  views.showError($('join-error'), reason);
}

async function leave() {
  const s = session;
  if (!s) return;
  s.ended = true;
  session = null;
  if (s.ready && s.room) {
    try {
      await s.conn.request({ type: 'leave', room: s.room.name }, 1500);
    } catch {
      // Closing the socket below takes us out of the room anyway.
    }
  }
  s.conn.close(1000, 'left');
  $('messages').replaceChildren();
  $('users').replaceChildren();
  showJoinPage();
}

// ---------------------------------------------------------------- wiring

function init() {
  factsLoaded = loadFacts().then((facts) => {
    applyFacts(facts);
    return facts;
  });
  const stored = loadIdentity();
  if (stored) $('nickname').value = stored.name;

  $('join-form').addEventListener('submit', onJoinSubmit);
  // A typed room name wins over the picker; make that visible.
  $('new-room').addEventListener('input', () => {
    $('room-select').disabled = $('new-room').value.trim() !== '';
  });

  const input = $('message-input');
  $('message-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = input.value;
    if (!session || !session.joined || text.trim() === '') return;
    input.value = '';
    views.autosize(input);
    views.showError($('chat-error'), '');
    queueMessage(session, text);
    input.focus();
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('message-form').requestSubmit();
    }
  });
  input.addEventListener('input', () => views.autosize(input));

  $('messages').addEventListener('scroll', () => {
    if (session && session.room && $('messages').scrollTop < 60) loadOlder(session);
  }, { passive: true });

  $('leave-button').addEventListener('click', () => { leave(); });
  $('account-form').addEventListener('submit', onAccountSubmit);
  $('enter-button').addEventListener('click', () => { enterAsAccount(chosenRoom()); });
  $('signout-button').addEventListener('click', () => { signOut(); });
  $('join-signout-button').addEventListener('click', () => { signOut(); });

  showJoinPage();
  resumeAccount();
}

/**
 * A browser still signed in (its cookie) goes straight back to the chat, in
 * the room it was last in, or else the first room the page offers.
 */
async function resumeAccount() {
  let reply;
  try {
    reply = await accountRequest('GET', '/api/session');
  } catch {
    return; // not signed in (401), or the server cannot say: the join page stays
  }
  setAccount(reply);
  if (!account || session) return; // someone joined as a guest meanwhile
  showJoinPage();
  let room = loadRoom();
  if (!room) {
    await refreshRooms();
    room = $('room-select').value || (await factsLoaded).defaultRooms?.[0];
  }
  if (room && account && !session) await enterAsAccount(room);
}

init();
