// Building and updating the DOM.
//
// Owns: every element the app creates. Text from the network only ever goes
// through textContent or attribute setters, never through HTML parsing, so a
// message like `<img onerror=…>` is shown as the characters it is. Every
// name and message text is bidi-isolated (<bdi>, or `unicode-bidi: isolate`
// in app.css), so right-to-left text or a stray override such as U+202E
// inside one cannot reorder what is drawn around it.

export const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Local time like "1:23 am": 12-hour clock, no leading zero, lowercase am/pm. */
export function formatTime(ts) {
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return '';
  const hours = date.getHours();
  const minutes = String(date.getMinutes()).padStart(2, '0');
  return `${hours % 12 || 12}:${minutes} ${hours < 12 ? 'am' : 'pm'}`;
}

function timeElement(ts) {
  const time = el('time', 'time', formatTime(ts));
  const date = new Date(ts);
  if (!Number.isNaN(date.getTime())) {
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
  }
  return time;
}

/** Shows exactly one of the two top-level views. */
export function showView(name) {
  $('join-view').hidden = name !== 'join';
  $('chat-view').hidden = name !== 'chat';
}

export function showError(element, text) {
  element.textContent = text || '';
  element.hidden = !text;
}

/**
 * Fills the room picker, keeping the current choice when it still exists.
 * With no rooms it holds one placeholder that picks nothing.
 */
export function renderRoomOptions(select, rooms) {
  const previous = select.value;
  select.replaceChildren();
  if (rooms.length === 0) {
    const placeholder = el('option', undefined, 'No rooms listed: name one below');
    placeholder.value = '';
    placeholder.disabled = true;
    placeholder.selected = true;
    select.append(placeholder);
    return;
  }
  for (const room of rooms) {
    const option = el('option');
    option.value = room.name;
    option.textContent = Number.isInteger(room.online)
      ? `${room.name} (${room.online} online)`
      : room.name;
    select.append(option);
  }
  if (rooms.some((room) => room.name === previous)) select.value = previous;
}

export function renderUsers(list, users, me) {
  list.replaceChildren();
  for (const user of users) {
    const item = el('li', user === me ? 'user me' : 'user');
    item.append(el('bdi', 'name', user));
    list.append(item);
  }
}

/**
 * A chat message: <li class="message" data-seq data-from [data-author]> with
 * .author, .time and .text. `data-author` is the sender's identity, for
 * telling apart two people who used one name (see markSharedNames).
 */
export function messageItem(message, me) {
  const item = el('li', message.from === me ? 'message own' : 'message');
  item.dataset.seq = String(message.seq);
  item.dataset.from = String(message.from ?? '');
  if (Number.isSafeInteger(message.author)) item.dataset.author = String(message.author);
  const meta = el('div', 'meta');
  meta.append(el('bdi', 'author', message.from), timeElement(message.ts));
  item.append(meta, el('p', 'text', message.text));
  return item;
}

/**
 * A message of ours the server has not confirmed yet: shown at once, marked
 * "sending…" (li.pending, not li.message: it has no seq yet). Replaced by a
 * messageItem once its `sent` arrives.
 */
export function pendingMessageItem(text, me) {
  const item = el('li', 'pending own');
  const meta = el('div', 'meta');
  meta.append(el('bdi', 'author', me), el('span', 'sending', 'sending…'));
  item.append(meta, el('p', 'text', text));
  return item;
}

/** A short tag for an author id: enough to tell a handful of people apart. */
export function authorTag(author) {
  return `#${Number(author).toString(36).slice(-4)}`;
}

/**
 * Marks the messages whose author name is shared, among the messages shown,
 * by two or more identities: each gets a tag of its author id beside the
 * name (.author-tag), so an impostor who took a name after its holder left
 * does not pass for them. Messages without an author id (stored before ids
 * existed) are never marked: nothing is known about them.
 */
export function markSharedNames(list) {
  const items = [...list.querySelectorAll('li.message')];
  const authorsByName = new Map();
  for (const item of items) {
    if (item.dataset.author === undefined) continue;
    const authors = authorsByName.get(item.dataset.from) ?? new Set();
    authors.add(item.dataset.author);
    authorsByName.set(item.dataset.from, authors);
  }
  for (const item of items) {
    const shared = item.dataset.author !== undefined
      && authorsByName.get(item.dataset.from).size > 1;
    const tag = item.querySelector('.author-tag');
    if (shared && !tag) {
      const added = el('span', 'author-tag', authorTag(item.dataset.author));
      added.title = 'Several people have used this name here: the tag tells them apart.';
      item.querySelector('.author').after(added);
    } else if (!shared && tag) {
      tag.remove();
    }
  }
}

/**
 * A line from the server's bot, e.g. the welcome greeting, under `bot`: the
 * name the server gives its bot (`server.bot` in `welcome`).
 */
export function botNoticeItem(text, ts, bot) {
  const item = el('li', 'notice bot');
  const meta = el('div', 'meta');
  if (bot) meta.append(el('bdi', 'author', bot));
  meta.append(timeElement(ts ?? Date.now()));
  item.append(meta, el('p', 'text', text));
  return item;
}

/** A one-line event such as "bob has joined the chat". */
export function eventNoticeItem(text, kind = 'presence') {
  const item = el('li', `notice ${kind}`);
  item.append(el('p', 'text', text));
  return item;
}

/** Join/leave notices kept in the list; older ones collapse into one summary line. */
export const PRESENCE_NOTICES_KEPT = 50;

/**
 * "bob has joined the chat", "ann and bob have left the chat", "ann, bob
 * and 3 others have joined the chat": one line for a presence frame,
 * however many people it names.
 */
export function presenceText(names, verb) {
  return presenceWords(names, verb).join('');
}

/** presenceText's line in pieces: names at the odd places, words between. */
function presenceWords(names, verb) {
  const [first, second] = names;
  if (names.length === 1) return ['', first, ` has ${verb} the chat`];
  if (names.length === 2) return ['', first, ' and ', second, ` have ${verb} the chat`];
  const others = names.length - 2;
  return ['', first, ', ', second, ` and ${others} other${others === 1 ? '' : 's'} have ${verb} the chat`];
}

/** presenceText's line as DOM nodes: each name a <bdi>, so a right-to-left name cannot reorder the words. */
function presenceParts(names, verb) {
  return presenceWords(names, verb).map((piece, i) => (i % 2 === 1 ? el('bdi', 'name', piece) : piece));
}

/**
 * Appends a join/leave notice and keeps at most PRESENCE_NOTICES_KEPT of
 * them: the oldest gives its place to a summary line counting those hidden
 * (one line, moved to where the latest hidden notice was). Messages are
 * never removed; a flood of comings and goings costs the page a bounded
 * number of elements.
 */
export function addPresenceNotice(list, names, verb) {
  const item = el('li', 'notice presence');
  const text = el('p', 'text');
  text.append(...presenceParts(names, verb));
  item.append(text);
  list.append(item);
  const notices = list.getElementsByClassName('presence'); // live, no query
  if (notices.length <= PRESENCE_NOTICES_KEPT) return;
  let summary = list.querySelector('li.presence-summary');
  if (!summary) {
    summary = el('li', 'notice presence-summary');
    summary.dataset.hidden = '0';
    summary.append(el('p', 'text'));
  }
  const hidden = Number(summary.dataset.hidden) + 1;
  summary.dataset.hidden = String(hidden);
  summary.firstChild.textContent = `${hidden} earlier join/leave notice${hidden === 1 ? '' : 's'} hidden`;
  notices[0].replaceWith(summary);
}

/** Inserts a message item so that data-seq stays ascending among messages. */
export function insertBySeq(list, item, seq) {
  const messages = list.querySelectorAll('li.message');
  for (let i = messages.length - 1; i >= 0; i -= 1) {
    if (Number(messages[i].dataset.seq) < seq) {
      messages[i].after(item);
      return;
    }
  }
  if (messages.length > 0) {
    messages[0].before(item);
  } else {
    list.append(item);
  }
}

/** Adds older items above everything, keeping what the reader looks at in place. */
export function prependKeepingScroll(list, items) {
  const before = list.scrollHeight;
  const top = list.scrollTop;
  const anchor = list.querySelector('li.message');
  const fragment = document.createDocumentFragment();
  fragment.append(...items);
  if (anchor) {
    anchor.before(fragment);
  } else {
    list.prepend(fragment);
  }
  list.scrollTop = top + (list.scrollHeight - before);
}

export function isNearBottom(list, slack = 80) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < slack;
}

export function scrollToBottom(list) {
  list.scrollTop = list.scrollHeight;
}

/** Grows the message box with its content, up to the CSS max-height. */
export function autosize(textarea) {
  textarea.style.height = 'auto';
  if (textarea.value === '') return; // the placeholder must not size it
  textarea.style.height = `${textarea.scrollHeight}px`;
}

const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Connection lost — reconnecting…',
  disconnected: 'Disconnected',
};

export function setStatus(state) {
  const status = $('status');
  status.dataset.state = state;
  status.textContent = STATUS_TEXT[state] ?? state;
}
