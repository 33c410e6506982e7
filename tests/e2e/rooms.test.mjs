// End-to-end: the join page's room list, and a room removed under its
// members' feet (`chatterpro admin delete-room`).
//
// Run: cargo build && cd tests/e2e && npm ci && node --test rooms.test.mjs

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import {
  SERVER_BIN, launchBrowser, send, waitForMessage, waitForNotice, waitForText, withChat,
} from './harness.mjs';

const TEST_TIMEOUT = { timeout: 60_000 };
const DEFAULTS = ['Chat Room', 'Business Room', 'Gaming Room'];

/** The room names the join page offers, once it has loaded them. */
async function offeredRooms(page) {
  return page.$$eval('#room-select option', (options) => options.map((o) => o.value));
}

describe('rooms in the browser', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test('the join page lists rooms in use or written to, not rooms merely created', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const creator = await h.join('creator', 'Abandoned Room', { create: true });
      await waitForNotice(creator, 'Welcome to ChatterPro, creator!');
      await creator.click('#leave-button');
      await creator.locator('#join-view').waitFor({ state: 'visible' });
      await h.join('talker', 'Book Club', { create: true, page: creator });
      await send(creator, 'anyone reading?');
      await waitForMessage(creator, 'anyone reading?');
      await creator.click('#leave-button');
      const lurker = await h.join('lurker', 'Quiet Corner', { create: true });

      // The list is rebuilt about once a second: reload until it shows the change.
      const visitor = await h.newPage();
      const expected = [...DEFAULTS, 'Quiet Corner', 'Book Club'];
      const deadline = Date.now() + 15_000;
      for (;;) {
        await visitor.goto(h.server.url);
        // Filled from /api/rooms: its options carry online counts.
        await visitor.locator('#room-select option', { hasText: 'online' }).first().waitFor({ state: 'attached' });
        const offered = await offeredRooms(visitor);
        if (JSON.stringify(offered) === JSON.stringify(expected)) break;
        if (Date.now() > deadline) assert.deepEqual(offered, expected, 'the offered rooms');
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      assert.equal(await visitor.textContent('#room-select option[value="Quiet Corner"]'), 'Quiet Corner (1 online)');
      assert.ok(await lurker.isVisible('#chat-view'));
    });
  });

  test('members of a room the operator removes are told and back on the join page', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const alice = await h.join('alice', 'Doomed Room', { create: true });
      await send(alice, 'last words');
      await waitForMessage(alice, 'last words');

      await promisify(execFile)(SERVER_BIN, [
        'admin', '--database-url', `sqlite://${h.dir}/e2e.db`, 'delete-room', 'Doomed Room',
      ]);

      await alice.locator('#join-view').waitFor({ state: 'visible' });
      await waitForText(alice, '#join-error', 'The room “Doomed Room” was removed. Pick another one.');
      assert.ok(!(await offeredRooms(alice)).includes('Doomed Room'));
      // Joining it again makes a new, empty room.
      await alice.fill('#new-room', 'Doomed Room');
      await alice.click('#join-button');
      await alice.locator('#chat-view').waitFor({ state: 'visible' });
      await waitForNotice(alice, 'Welcome to ChatterPro, alice!');
      assert.equal(await alice.locator('#messages li.message').count(), 0);
    });
  });
});
