// End-to-end: names and texts that try to pass for something else.
//
// Run: cargo build && cd tests/e2e && npm ci && node --test names.test.mjs
// The servers here run with CHATTERPRO_NAME_HOLD=0s: a name is free as soon
// as its holder leaves, so a second person can take it within one test.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  launchBrowser, send, waitForMessage, waitForNotice, waitForValue, withChat,
} from './harness.mjs';

process.env.CHATTERPRO_NAME_HOLD = '0s';

const TEST_TIMEOUT = { timeout: 45_000 };

/** The bidi isolation of the elements matching `selector`: [tagName, unicode-bidi] each. */
function isolation(page, selector) {
  return page.$$eval(selector, (els) => els.map((e) => [e.tagName, getComputedStyle(e).unicodeBidi]));
}

/** Left edge, in pixels, of characters [from, to) of the text in `selector` (first match). */
function leftOf(page, selector, from, to) {
  return page.evaluate(([s, a, b]) => {
    const node = document.querySelector(s).firstChild;
    const range = document.createRange();
    range.setStart(node, a);
    range.setEnd(node, b);
    return range.getBoundingClientRect().left;
  }, [selector, from, to]);
}

describe('look-alike names and reversed text in the browser', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test('a right-to-left override in a message reorders nothing around it', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const alice = await h.join('alice', 'Chat Room');
      // A name written right to left, and a message with U+202E inside.
      const dana = await h.join('\u05D3\u05E0\u05D4 2', 'Chat Room');
      await waitForNotice(alice, '\u05D3\u05E0\u05D4 2 has joined the chat');
      const spoof = 'admin \u202Egnp.exe';
      await send(dana, spoof);
      await send(dana, 'next line');
      const [shown] = await waitForMessage(alice, spoof);
      assert.equal(shown.author, '\u05D3\u05E0\u05D4 2');
      await waitForMessage(alice, 'next line');

      // Every name and text is isolated: the author and names are <bdi>,
      // message texts have unicode-bidi: isolate.
      for (const [tag, bidi] of await isolation(alice, '#messages li.message .author')) {
        assert.equal(tag, 'BDI');
        assert.equal(bidi, 'isolate');
      }
      for (const [, bidi] of await isolation(alice, '#messages li.message .text')) {
        assert.equal(bidi, 'isolate');
      }
      assert.deepEqual(await isolation(alice, '#messages li.notice.presence .name'), [['BDI', 'isolate']]);
      for (const [tag, bidi] of await isolation(alice, '#users li .name')) {
        assert.equal(tag, 'BDI');
        assert.equal(bidi, 'isolate');
      }

      // Drawn: the override reverses only what follows it inside its own
      // message ("gnp.exe" is drawn as "exe.png" after "admin "); the
      // message after it reads left to right as typed.
      const spoofText = '#messages li.message:nth-last-child(2) .text';
      assert.equal(await alice.textContent(spoofText), spoof);
      assert.ok(await leftOf(alice, spoofText, 0, 5) < await leftOf(alice, spoofText, 7, 14),
        '"admin" stays first');
      const next = '#messages li.message:last-child .text';
      assert.equal(await alice.textContent(next), 'next line');
      assert.ok(await leftOf(alice, next, 0, 4) < await leftOf(alice, next, 5, 9),
        'the next message is not reversed');
      // The time after a right-to-left name stays after it.
      const meta = await alice.$eval('#messages li.message:last-child .meta', (m) => {
        const [author, time] = [m.querySelector('.author'), m.querySelector('.time')];
        return [author.getBoundingClientRect().left, time.getBoundingClientRect().left];
      });
      assert.ok(meta[0] < meta[1], `author ${meta[0]} before time ${meta[1]}`);
    });
  });

  test('two people who used one name are told apart by a tag', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const carol = await h.join('carol', 'Chat Room');
      const first = await h.join('alice', 'Chat Room');
      await send(first, 'it is me, alice');
      await waitForMessage(carol, 'it is me, alice');
      assert.equal(await carol.locator('#messages .author-tag').count(), 0,
        'one person, one name: no tag');

      await first.click('#leave-button');
      await waitForNotice(carol, 'alice has left the chat');
      // Someone else takes the name once it is free (no hold on this server):
      // the leave notice comes as the first alice's socket closes, which
      // frees the name a moment later.
      await new Promise((resolve) => setTimeout(resolve, 500));
      const second = await h.join('alice', 'Chat Room');
      await send(second, 'it is me, alice, honest');
      await waitForMessage(carol, 'it is me, alice, honest');

      const tags = await carol.$$eval('#messages li.message', (items) => items.map((li) => [
        li.querySelector('.author')?.textContent,
        li.querySelector('.author-tag')?.textContent ?? null,
      ]));
      assert.equal(tags.length, 2);
      assert.deepEqual(tags.map(([name]) => name), ['alice', 'alice']);
      const [[, one], [, other]] = tags;
      assert.match(one, /^#[0-9a-z]{1,4}$/);
      assert.match(other, /^#[0-9a-z]{1,4}$/);
      assert.notEqual(one, other, 'the two alices have different tags');
      // The newcomer's own page shows the tags too, from the joined history.
      await waitForValue(second, () => document.querySelectorAll('#messages .author-tag').length,
        null, 2, 'tags on the second alice\'s page');
    });
  });
});
