// End-to-end: the app follows what the server says about itself — its
// default rooms, its bot's name, its limits (`server` in `welcome`,
// `GET /api/info`) and the kind of its notices — and keeps no copy of them.
// The server runs with a welcome text and default rooms of its own.
//
// Run: cargo build && cd tests/e2e && npm ci && node --test facts.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  LOST_TEXT, joinFrom, launchBrowser, send, startServer, waitForMessage, waitForNotice, waitForText,
  waitForValue, withChat,
} from './harness.mjs';

const TEST_TIMEOUT = { timeout: 60_000 };
const WELCOME = 'Hello {name}, this server speaks for itself.';
const ROOMS = ['Lobby', 'Den', 'Attic'];
const SERVER_ARGS = ['--welcome', WELCOME, '--rooms', ROOMS.join(',')];

/** What the server says about itself, asked for the way the page does. */
async function serverInfo(h) {
  const response = await fetch(`${h.server.url}/api/info`);
  assert.equal(response.status, 200);
  return response.json();
}

function offeredRooms(page) {
  return page.$$eval('#room-select option', (options) => options.map((o) => o.value));
}

function waitForOfferedRooms(page, rooms) {
  return waitForValue(
    page,
    () => [...document.querySelectorAll('#room-select option')].map((o) => o.value),
    null, rooms, 'rooms offered on the join page',
  );
}

/** The texts of the bot's notices shown, in order. */
function botNotices(page) {
  return page.$$eval('#messages li.notice.bot .text', (els) => els.map((e) => e.textContent));
}

describe('the server\'s facts in the browser', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test('a server\'s own rooms are listed, its welcome shown once across reconnects, its text limit applied', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const info = await serverInfo(h);
      assert.deepEqual(info.default_rooms, ROOMS);
      const page = await h.newPage();
      await page.goto(h.server.url);
      await waitForOfferedRooms(page, ROOMS);
      await joinFrom(page, 'alice', 'Den');
      const welcome = 'Hello alice, this server speaks for itself.';
      await waitForNotice(page, welcome);
      assert.equal(await page.textContent('#messages li.notice.bot .author'), info.bot);
      assert.equal(await page.getAttribute('#message-input', 'maxlength'), String(info.max_text_chars));

      // A reconnect rejoins the room and is welcomed again by the server:
      // the page recognises the notice by its kind and shows it once.
      const { port } = h.server;
      await h.server.stop('SIGTERM');
      await waitForText(page, '#status', LOST_TEXT);
      h.server = await startServer({ dbDir: h.dir, port, args: SERVER_ARGS });
      await waitForText(page, '#status', 'Connected', 15_000);
      // A message sent now comes after the rejoin's welcome on the socket.
      await send(page, 'back again');
      await waitForMessage(page, 'back again');
      assert.deepEqual(await botNotices(page), [welcome], 'the welcome is shown once');

      // Leaving and joining again starts a new stay, welcomed once.
      await page.click('#leave-button');
      await page.locator('#join-view').waitFor({ state: 'visible' });
      await joinFrom(page, 'alice', 'Attic');
      await waitForNotice(page, welcome);
      await send(page, 'in the attic');
      await waitForMessage(page, 'in the attic');
      assert.deepEqual(await botNotices(page), [welcome]);
    }, { serverArgs: SERVER_ARGS });
  });

  test('without a room list the join page offers the server\'s default rooms', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const page = await h.newPage();
      // As when storage is down: the list cannot be built, the facts can.
      await page.route('**/api/rooms', (route) => route.fulfill({ status: 503, body: 'unavailable' }));
      await page.goto(h.server.url);
      await waitForOfferedRooms(page, ROOMS);
      assert.deepEqual(await offeredRooms(page), ROOMS);
      await joinFrom(page, 'bob', 'Attic');
      await waitForNotice(page, 'Hello bob, this server speaks for itself.');
    }, { serverArgs: SERVER_ARGS });
  });

  test('the bot\'s name and the text limit are the ones the server states', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      // Another server's facts, stated both ways the page learns them: the
      // page must show those, whatever it may have been written against.
      const other = { bot: 'Facts Bot', max_text_chars: 140 };
      const page = await h.newPage();
      await page.route('**/api/info', async (route) => {
        const response = await route.fetch();
        await route.fulfill({ response, json: { ...(await response.json()), ...other } });
      });
      await page.routeWebSocket(/\/ws$/, (ws) => {
        const server = ws.connectToServer();
        server.onMessage((frame) => {
          const message = JSON.parse(frame);
          if (message.type === 'welcome') message.server = { ...message.server, ...other };
          ws.send(JSON.stringify(message));
        });
      });
      await page.goto(h.server.url);
      await waitForValue(page, () => document.getElementById('message-input').getAttribute('maxlength'),
        null, '140', 'the message box\'s limit from GET /api/info');
      await joinFrom(page, 'carol', 'Lobby');
      await waitForNotice(page, 'Hello carol, this server speaks for itself.');
      assert.equal(await page.textContent('#messages li.notice.bot .author'), 'Facts Bot');
      assert.equal(await page.getAttribute('#message-input', 'maxlength'), '140');
      await send(page, 'short enough');
      await waitForMessage(page, 'short enough');
    }, { serverArgs: SERVER_ARGS });
  });
});
