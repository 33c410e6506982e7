// End-to-end: a message typed just before the connection drops arrives
// exactly once. The page reaches the server through a TCP proxy that cuts
// the connection at its first `send` — after forwarding it (stored, its
// `sent` lost) or before (never stored) — and refuses reconnects for a
// moment, so the "sending…" state can be seen; then the page reconnects,
// resends with the message's nonce, and shows the message once.
//
// Run: cargo build && cd tests/e2e && npm ci && node --test resend.test.mjs

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  LOST_TEXT, joinFrom, launchBrowser, messagesWithText, send, waitForMessage, waitForText,
  waitForValue, withChat,
} from './harness.mjs';
import { PendingMessages, newNonce } from '../../static/js/state.js';

const TEST_TIMEOUT = { timeout: 45_000 };
const TEXT = 'typed just before the drop';

/**
 * A TCP proxy to the port `portOf()` names when a connection comes (the
 * proxy starts first: the server must be told the proxy's origin, which is
 * the page's). HTTP passes through; on a WebSocket it reads the
 * browser's (masked) frames, and once armed cuts the connection at the next
 * text frame holding a `send`: `mode` 'after' forwards that frame first and
 * shows the browser nothing the server sends afterwards; 'before' drops it.
 * While `holding`, new connections are refused (closed at once).
 */
function startProxy(portOf) {
  const proxy = {
    armed: null, // 'after' | 'before' | null
    holding: false,
    cuts: 0,
    sockets: new Set(),
  };
  const server = net.createServer((client) => {
    if (proxy.holding) {
      client.destroy();
      return;
    }
    const upstream = net.connect(portOf(), '127.0.0.1');
    proxy.sockets.add(client);
    proxy.sockets.add(upstream);
    const cleanup = () => {
      client.destroy();
      upstream.destroy();
      proxy.sockets.delete(client);
      proxy.sockets.delete(upstream);
    };
    client.on('error', cleanup);
    upstream.on('error', cleanup);
    client.on('close', cleanup);
    upstream.on('close', cleanup);
    upstream.pipe(client);

    let buffer = Buffer.alloc(0);
    let inHead = true; // reading the HTTP request head
    let websocket = false;
    client.on('data', (chunk) => {
      if (!inHead && !websocket) {
        upstream.write(chunk);
        return;
      }
      buffer = Buffer.concat([buffer, chunk]);
      if (inHead) {
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffer.subarray(0, end + 4);
        websocket = /^upgrade:\s*websocket/im.test(head.toString('latin1'));
        upstream.write(head);
        buffer = buffer.subarray(end + 4);
        inHead = false;
        if (!websocket) {
          // Keep-alive HTTP: everything else passes through as it is.
          if (buffer.length > 0) upstream.write(buffer);
          buffer = Buffer.alloc(0);
          return;
        }
      }
      for (;;) {
        const frame = parseClientFrame(buffer);
        if (!frame) return;
        const bytes = buffer.subarray(0, frame.length);
        buffer = buffer.subarray(frame.length);
        if (proxy.armed && frame.opcode === 1 && /"type":"send"/.test(frame.text)) {
          const mode = proxy.armed;
          proxy.armed = null;
          proxy.cuts += 1;
          upstream.unpipe(client);
          client.destroy();
          if (mode === 'after') {
            // The frame, then the end: the server reads and stores it.
            upstream.end(bytes);
          } else {
            upstream.destroy();
          }
          return;
        }
        upstream.write(bytes);
      }
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      proxy.url = `http://127.0.0.1:${server.address().port}`;
      proxy.close = () => {
        for (const socket of proxy.sockets) socket.destroy();
        return new Promise((r) => server.close(r));
      };
      resolve(proxy);
    });
  });
}

/** The first complete client-to-server frame in `buf`: {length, opcode, text}, or null. */
function parseClientFrame(buf) {
  if (buf.length < 2) return null;
  const opcode = buf[0] & 0x0f;
  const masked = (buf[1] & 0x80) !== 0;
  let length = buf[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buf.length < 4) return null;
    length = buf.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buf.length < 10) return null;
    length = Number(buf.readBigUInt64BE(2));
    offset = 10;
  }
  const maskOffset = offset;
  if (masked) offset += 4;
  if (buf.length < offset + length) return null;
  const payload = Buffer.from(buf.subarray(offset, offset + length));
  if (masked) {
    for (let i = 0; i < payload.length; i += 1) payload[i] ^= buf[maskOffset + (i % 4)];
  }
  return { length: offset + length, opcode, text: payload.toString('utf8') };
}

function pendingTexts(page) {
  return page.$$eval('#messages li.pending', (items) => items.map((li) => ({
    text: li.querySelector('.text')?.textContent,
    state: li.querySelector('.sending')?.textContent,
  })));
}

test('each pending message keeps one nonce of its own, valid for the server', () => {
  const pending = new PendingMessages();
  const first = pending.add('one', { item: 'li' });
  const second = pending.add('two');
  assert.equal(first.item, 'li');
  assert.notEqual(first.nonce, second.nonce);
  for (const { nonce } of [first, second]) assert.match(nonce, /^[A-Za-z0-9_-]{1,64}$/);
  assert.equal(pending.head, first);
  pending.remove(first);
  assert.equal(pending.head, second);
  assert.equal(pending.size, 1);
  assert.equal(second.attempted, false);
});

test('without crypto.randomUUID (plain http), nonces are UUIDs all the same', () => {
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const insecure = { getRandomValues: (a) => globalThis.crypto.getRandomValues(a) };
  const nonces = new Set(Array.from({ length: 100 }, () => newNonce(insecure)));
  assert.equal(nonces.size, 100);
  for (const nonce of nonces) assert.match(nonce, uuid);
});

describe('a message typed just before the connection drops', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  for (const mode of ['after', 'before']) {
    const what = mode === 'after'
      ? 'stored, its confirmation lost'
      : 'lost on its way to the server';
    test(`arrives exactly once when the connection drops with it ${what}`, TEST_TIMEOUT, async (t) => {
      let serverPort;
      const proxy = await startProxy(() => serverPort);
      t.after(() => proxy.close());
      // The page's origin is the proxy's: the server allows it, as it would
      // a reverse proxy's public address.
      await withChat(browser, t.name, async (h) => {
        serverPort = h.server.port;
        const bob = await h.join('bob', 'Chat Room');
        const alice = await h.newPage();
        await alice.goto(proxy.url);
        await joinFrom(alice, 'alice', 'Chat Room');
        await send(alice, 'hello before');
        await waitForMessage(bob, 'hello before');

        proxy.armed = mode;
        proxy.holding = true;
        await send(alice, TEXT);
        await waitForText(alice, '#status', LOST_TEXT);
        assert.equal(proxy.cuts, 1, 'the proxy cut the connection at the send');
        // Visible at once, marked as not yet sent, while the page is offline.
        assert.deepEqual(await pendingTexts(alice), [{ text: TEXT, state: 'sending…' }]);
        assert.deepEqual(await messagesWithText(alice, TEXT), []);
        if (mode === 'after') {
          // The server stored it: the other member has it already.
          await waitForMessage(bob, TEXT);
        }

        proxy.holding = false;
        await waitForText(alice, '#status', 'Connected', 15_000);
        await waitForValue(alice, () => document.querySelectorAll('#messages li.pending').length, null, 0,
          'messages still sending');
        const shown = await waitForMessage(alice, TEXT);
        assert.equal(shown.length, 1, 'shown once on the sender\'s page');
        assert.equal(shown[0].author, 'alice');
        const onBob = await waitForMessage(bob, TEXT);
        assert.equal(onBob.length, 1, 'delivered once');
        assert.equal(shown[0].seq, onBob[0].seq, 'the same stored message');
        // Stored once: a newcomer's catch-up holds one copy.
        const carol = await h.join('carol', 'Chat Room');
        const inHistory = await waitForMessage(carol, TEXT);
        assert.equal(inHistory.length, 1, 'one stored copy');
        // And the message after it goes out normally, once.
        await send(alice, 'hello after');
        assert.equal((await waitForMessage(bob, 'hello after')).length, 1);
        assert.equal((await messagesWithText(bob, TEXT)).length, 1, 'no late duplicate');
        const errorHidden = await alice.$eval('#chat-error', (e) => e.hidden);
        assert.ok(errorHidden, 'no "may not have been sent" error');
        assert.equal(await alice.inputValue('#message-input'), '', 'nothing put back in the message box');
      }, { serverArgs: ['--allowed-origins', proxy.url] });
    });
  }
});
