// End-to-end: the browser app in headless Chromium against the real server.
//
// Run: cargo build && cd tests/e2e && npm ci && node --test
// Env: CHATTERPRO_BIN (server binary), CHROMIUM_PATH (/usr/bin/chromium),
//      SCREENSHOT_PATH (when set, also writes the README screenshot there).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  LOST_TEXT, TIME_PATTERN, joinFrom, launchBrowser, messagesWithText, send, shownSeqs, startServer,
  waitForMessage, waitForNotice, waitForText, waitForTexts, waitForValue, withChat,
} from './harness.mjs';

const TEST_TIMEOUT = { timeout: 45_000 };

describe('ChatterPro in the browser', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test('messages and presence reach the members of the room and no one else', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const alice = await h.join('alice', 'Chat Room');
      await waitForNotice(alice, 'Welcome to ChatterPro, alice!');
      assert.equal(await alice.textContent('#messages li.notice.bot .author'), 'ChatterPro Bot');
      assert.equal(await alice.textContent('#room-name'), 'Chat Room');
      assert.equal(await alice.evaluate(() => document.activeElement?.id), 'message-input',
        'focus moves to the message box after joining');

      const bob = await h.join('bob', 'Chat Room');
      const carol = await h.join('carol', 'Gaming Room');
      await waitForNotice(alice, 'bob has joined the chat');
      await waitForTexts(alice, '#users li', ['alice', 'bob']);
      await waitForTexts(bob, '#users li', ['alice', 'bob']);
      await waitForTexts(carol, '#users li', ['carol']);

      await send(bob, 'hello from bob');
      for (const page of [alice, bob]) {
        const [shown, ...extra] = await waitForMessage(page, 'hello from bob');
        assert.equal(extra.length, 0, 'shown once');
        assert.equal(shown.author, 'bob');
        assert.match(shown.time, TIME_PATTERN);
      }
      assert.equal(await bob.getAttribute('#messages li.message', 'class'), 'message own',
        "the sender's own messages are marked");

      // Carol's own message comes back after bob's was fanned out, so by then
      // bob's message and notices would have reached her if they leaked.
      await send(carol, 'anyone here?');
      await waitForMessage(carol, 'anyone here?');
      assert.deepEqual(await messagesWithText(carol, 'hello from bob'), []);
      const carolNotices = await carol.$$eval('#messages li.notice .text', (els) => els.map((e) => e.textContent));
      assert.deepEqual(carolNotices, ['Welcome to ChatterPro, carol!']);
      await waitForTexts(carol, '#users li', ['carol']);

      // A taken nickname is refused on the join page.
      const mallory = await h.newPage();
      await mallory.goto(h.server.url);
      await mallory.fill('#nickname', 'alice');
      await mallory.selectOption('#room-select', 'Chat Room');
      await mallory.click('#join-button');
      await mallory.locator('#join-error').waitFor({ state: 'visible' });
      assert.match(await mallory.textContent('#join-error'), /in use|taken/i);
      assert.equal(await mallory.isVisible('#chat-view'), false);

      await bob.click('#leave-button');
      await bob.locator('#join-form').waitFor({ state: 'visible' });
      assert.equal(await bob.isVisible('#chat-view'), false);
      await waitForNotice(alice, 'bob has left the chat');
      await waitForTexts(alice, '#users li', ['alice']);

      const cspErrors = h.consoleErrors.filter((e) => /Content Security Policy|uncaught/i.test(e));
      assert.deepEqual(cspErrors, [], 'no CSP violations or uncaught errors');
    });
  });

  test('markup in messages and room names is shown as text', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const payload = '<img src=x onerror="window.__pwned=1">';
      const roomName = '<b>bold</b>';
      const page = await h.join('mallory', roomName, { create: true });
      await waitForText(page, '#room-name', roomName);

      await send(page, payload);
      const [shown] = await waitForMessage(page, payload);
      assert.equal(shown.text, payload);
      await waitForNotice(page, 'Welcome to ChatterPro, mallory!');

      assert.equal(await page.evaluate(() => window.__pwned), undefined);
      assert.equal(await page.locator('#messages img').count(), 0);
      assert.equal(await page.locator('#room-name b, #chat-view b').count(), 0);

      // The new room is offered to the next visitor, also as plain text.
      const other = await h.newPage();
      await other.goto(h.server.url);
      await waitForValue(other, (name) => [...document.querySelectorAll('#room-select option')]
        .some((o) => o.value === name && o.textContent.startsWith(`${name} (`)), roomName, true,
      'new room in the room picker');
      assert.equal(await other.locator('#room-select b').count(), 0);
      await joinFrom(other, 'viewer', roomName);
      await waitForMessage(other, payload);
      assert.equal(await other.evaluate(() => window.__pwned), undefined);
      assert.equal(await other.locator('#messages img').count(), 0);
    });
  });

  test('older history loads when scrolling to the top', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const writer = await h.join('writer', 'Business Room');
      await writer.evaluate(() => {
        const input = document.getElementById('message-input');
        const form = document.getElementById('message-form');
        for (let i = 1; i <= 60; i += 1) {
          input.value = `history message ${i}`;
          form.requestSubmit();
        }
      });
      await waitForValue(writer, () => document.querySelectorAll('#messages li.message').length, null, 60,
        'messages shown to the writer', 30_000);

      const reader = await h.join('reader', 'Business Room');
      await waitForValue(reader, () => document.querySelectorAll('#messages li.message').length, null, 50,
        'messages on join');
      const texts = () => [...document.querySelectorAll('#messages li.message .text')].map((e) => e.textContent);
      const firstPage = await reader.evaluate(texts);
      assert.equal(firstPage[0], 'history message 11');
      assert.equal(firstPage.at(-1), 'history message 60');

      // The newest message is in view; scroll up to the oldest.
      const anchorSeq = (await shownSeqs(reader))[0];
      await reader.$eval('#messages', (list) => { list.scrollTop = 0; });
      await waitForValue(reader, () => document.querySelectorAll('#messages li.message').length, null, 60,
        'messages after scrolling to the top');
      const all = await reader.evaluate(texts);
      assert.deepEqual(all, Array.from({ length: 60 }, (_, i) => `history message ${i + 1}`));
      const seqs = await shownSeqs(reader);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'ordered by seq');

      // Scroll position is kept: the message that was on top is still in view.
      const anchorVisible = await reader.$eval('#messages', (list, seq) => {
        const item = list.querySelector(`li.message[data-seq="${seq}"]`);
        const l = list.getBoundingClientRect();
        const r = item.getBoundingClientRect();
        return r.bottom > l.top && r.top < l.bottom;
      }, anchorSeq);
      assert.ok(anchorVisible, 'the previously oldest message stays in view after prepending');

    });
  });

  test('both pages reconnect after a server restart without duplicates', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const alice = await h.join('alice', 'Chat Room');
      const bob = await h.join('bob', 'Chat Room');
      await send(alice, 'before the restart');
      await waitForMessage(alice, 'before the restart');
      await waitForMessage(bob, 'before the restart');

      // SIGTERM: the server closes sockets with 1001; SIGKILL: they just drop.
      for (const signal of ['SIGTERM', 'SIGKILL']) {
        const { port } = h.server;
        await h.server.stop(signal);
        await waitForText(alice, '#status', LOST_TEXT);
        await waitForText(bob, '#status', LOST_TEXT);

        h.server = await startServer({ dbDir: h.dir, port });
        await waitForText(alice, '#status', 'Connected', 15_000);
        await waitForText(bob, '#status', 'Connected', 15_000);
        await waitForTexts(alice, '#users li', ['alice', 'bob']);
        await waitForTexts(bob, '#users li', ['alice', 'bob']);

        const text = `after the ${signal} restart`;
        await send(bob, text);
        for (const page of [alice, bob]) {
          const shown = await waitForMessage(page, text);
          assert.equal(shown.length, 1, `"${text}" appears exactly once`);
          assert.equal(shown[0].author, 'bob');
        }
      }

      for (const page of [alice, bob]) {
        assert.equal((await messagesWithText(page, 'before the restart')).length, 1, 'no replayed duplicates');
        const seqs = await shownSeqs(page);
        assert.equal(seqs.length, 3);
        assert.equal(new Set(seqs).size, seqs.length, 'every seq shown once');
        assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'ordered by seq');
        const welcomes = await page.$$eval('#messages li.notice.bot', (els) => els.length);
        assert.equal(welcomes, 1, 'the welcome is not repeated after reconnecting');
      }
    });
  });

  test('works on a phone-sized screen and remembers the nickname', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const viewport = { width: 375, height: 740 };
      const page = await h.join('phoebe', 'Chat Room', { viewport });
      await send(page, 'typing on a small screen');
      await waitForMessage(page, 'typing on a small screen');

      for (const selector of ['#message-input', '#send-button', '#leave-button']) {
        assert.ok(await page.isVisible(selector), `${selector} visible`);
        const box = await page.locator(selector).boundingBox();
        assert.ok(box, `${selector} has a box`);
        assert.ok(box.x >= 0 && box.x + box.width <= viewport.width, `${selector} fits horizontally: ${JSON.stringify(box)}`);
        assert.ok(box.y >= 0 && box.y + box.height <= viewport.height, `${selector} fits vertically: ${JSON.stringify(box)}`);
      }
      assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth),
        'no horizontal scrolling');
      await waitForTexts(page, '#users li', ['phoebe']);

      // A reload offers the same name again and the stored session reclaims it.
      const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('chatterpro.identity')));
      assert.equal(stored.name, 'phoebe');
      assert.equal(typeof stored.session, 'string');
      await page.reload();
      assert.equal(await page.inputValue('#nickname'), 'phoebe');
      await joinFrom(page, 'phoebe', 'Chat Room');
      await waitForMessage(page, 'typing on a small screen');

      // So does a second tab of the same browser while the first stays open.
      const second = await page.context().newPage();
      await second.goto(h.server.url);
      assert.equal(await second.inputValue('#nickname'), 'phoebe');
      await joinFrom(second, 'phoebe', 'Chat Room');
      await waitForMessage(second, 'typing on a small screen');
      await second.close();
    });
  });

  test('README screenshot', { ...TEST_TIMEOUT, skip: !process.env.SCREENSHOT_PATH && 'SCREENSHOT_PATH not set' }, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const alice = await h.join('alice', 'Chat Room');
      const bob = await h.join('bob', 'Chat Room');
      await h.join('carol', 'Chat Room');
      const lines = [
        [bob, 'Hey! Did the deploy go out?'],
        [alice, 'Yes, about ten minutes ago. All green so far.'],
        [bob, 'Nice. I will keep an eye on the dashboards.'],
        [alice, 'Thanks! Release notes:\n• faster reconnects\n• history paging'],
        [bob, 'Looks great, thanks!'],
      ];
      for (const [page, text] of lines) {
        await send(page, text);
        await waitForMessage(alice, text);
      }
      await waitForMessage(bob, 'Looks great, thanks!');
      await alice.locator('#message-input').fill('Lunch at 12:30?');
      await alice.screenshot({ path: process.env.SCREENSHOT_PATH });
    });
  });
});
