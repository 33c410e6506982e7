// End-to-end: accounts in the browser — sign up, the session cookie across a
// reload and across tabs, sign out closing every tab of the session (4001),
// and an account's name kept from guests.
//
// Run: cargo build && cd tests/e2e && npm ci && node --test accounts.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  WAIT_MS, launchBrowser, send, waitForMessage, waitForNotice, waitForText, waitForTexts, withChat,
} from './harness.mjs';

const TEST_TIMEOUT = { timeout: 90_000 };
const PASSWORD = 'correct horse battery staple';

/** Fills the account form on a loaded join page and presses `button` ("Sign in" or "Create account"). */
async function submitAccount(page, name, password, button, room) {
  await page.selectOption('#room-select', room);
  await page.fill('#account-name', name);
  await page.fill('#account-password', password);
  await page.getByRole('button', { name: button, exact: true }).click();
}

/** Waits for the chat view, connected, in `room`. */
async function inChat(page, room) {
  await page.locator('#chat-view').waitFor({ state: 'visible' });
  await waitForText(page, '#status', 'Connected');
  await waitForText(page, '#room-name', room);
}

describe('accounts in the browser', () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test('sign up, reload, a second tab, sign out everywhere, the name kept from guests', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const first = await h.newPage();
      await first.goto(h.server.url);
      // Not the first room offered, so that the reload below must remember it.
      await submitAccount(first, 'alice', PASSWORD, 'Create account', 'Business Room');
      await inChat(first, 'Business Room');
      await waitForText(first, '#account-box', 'alice · Sign out');
      assert.ok(await first.isVisible('#account-box'), 'the account is shown in the header');
      await waitForNotice(first, 'Welcome to ChatterPro, alice!');
      await send(first, 'hello as an account');
      const [mine] = await waitForMessage(first, 'hello as an account');
      assert.equal(mine.author, 'alice');
      await waitForTexts(first, '#users li', ['alice']);

      // The cookie keeps the page signed in: no name typed, same room.
      await first.reload();
      await inChat(first, 'Business Room');
      await waitForText(first, '#account-box', 'alice · Sign out');
      await waitForMessage(first, 'hello as an account');
      await waitForTexts(first, '#users li', ['alice']);

      // Leaving the room keeps the account: the join page offers to go back in, no form.
      await first.click('#leave-button');
      await first.locator('#join-view').waitFor({ state: 'visible' });
      await waitForText(first, '#signed-in-heading', 'Signed in as alice');
      assert.ok(await first.isHidden('#account-form'), 'no sign-in form while signed in');
      assert.ok(await first.isHidden('#join-form'), 'no guest form while signed in');
      await first.selectOption('#room-select', 'Business Room');
      await first.click('#enter-button');
      await inChat(first, 'Business Room');

      // A second tab of the same browser shares the session.
      const second = await first.context().newPage();
      second.setDefaultTimeout(WAIT_MS);
      await second.goto(h.server.url);
      await inChat(second, 'Business Room');
      await waitForText(second, '#account-box', 'alice · Sign out');

      // A guest elsewhere cannot take the account's name.
      const guest = await h.newPage();
      await guest.goto(h.server.url);
      await guest.fill('#nickname', 'alice');
      await guest.selectOption('#room-select', 'Chat Room');
      await guest.click('#join-button');
      await waitForText(guest, '#join-error', 'That nickname is already in use. Please pick another one.');
      assert.ok(await guest.isHidden('#chat-view'), 'the guest stays on the join page');

      // Signing out on the first tab closes the second's socket (4001): it
      // shows the join page, says why, and stays there.
      await first.getByRole('button', { name: 'Sign out' }).click();
      await first.locator('#join-view').waitFor({ state: 'visible' });
      assert.ok(await first.isVisible('#account-form'), 'the first tab offers to sign in again');
      assert.ok(await first.isHidden('#join-notice'), 'no "signed out elsewhere" notice on the tab that signed out');
      await second.locator('#join-view').waitFor({ state: 'visible' });
      await waitForText(second, '#join-notice', 'You were signed out.');
      assert.ok(await second.isVisible('#account-form'), 'the second tab offers to sign in again');
      assert.ok(await second.isHidden('#account-box'));
      await new Promise((resolve) => setTimeout(resolve, 1500)); // longer than the first reconnect delay
      assert.ok(await second.isVisible('#join-view'), 'the second tab did not reconnect into the chat');

      // Signed out for real: a reload stays on the join page.
      await second.reload();
      await second.locator('#room-select option', { hasText: 'online' }).first().waitFor({ state: 'attached' });
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.ok(await second.isVisible('#join-view'), 'a reload after signing out shows the join page');
      assert.ok(await second.isVisible('#account-form'));

      // Signing in again (wrong password first: the server's message shows).
      await submitAccount(second, 'alice', 'not the password', 'Sign in', 'Chat Room');
      await waitForText(second, '#join-error', 'wrong name or password');
      assert.ok(await second.isHidden('#chat-view'));
      await submitAccount(second, 'alice', PASSWORD, 'Sign in', 'Chat Room');
      await inChat(second, 'Chat Room');
      await waitForText(second, '#account-box', 'alice · Sign out');
    });
  });

  test('sign-up refusals show the server\'s message', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const page = await h.newPage();
      await page.goto(h.server.url);
      await submitAccount(page, 'bob', 'password', 'Create account', 'Chat Room');
      await waitForValueNonEmpty(page, '#join-error');
      const text = await page.textContent('#join-error');
      assert.match(text, /password/i, `a weak password is explained: ${text}`);
      assert.ok(await page.isHidden('#chat-view'));
    });
  });

  test('a server without guests offers accounts only', TEST_TIMEOUT, async (t) => {
    await withChat(browser, t.name, async (h) => {
      const page = await h.newPage();
      await page.goto(h.server.url);
      await page.locator('#account-form').waitFor({ state: 'visible' });
      await page.locator('#join-form').waitFor({ state: 'hidden' });
      await submitAccount(page, 'carol', PASSWORD, 'Create account', 'Chat Room');
      await inChat(page, 'Chat Room');
      await page.getByRole('button', { name: 'Sign out', exact: true }).first().click();
      await page.locator('#account-form').waitFor({ state: 'visible' });
      assert.ok(await page.isHidden('#join-form'), 'signed out, the guest form stays hidden');
    }, { serverArgs: ['--guests=false'] });
  });
});

async function waitForValueNonEmpty(page, selector) {
  await page.locator(`${selector}:not([hidden])`).waitFor({ state: 'visible' });
}
