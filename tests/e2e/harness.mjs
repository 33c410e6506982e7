// Shared pieces of the end-to-end suite: the real server as a child process,
// headless Chromium, and waits that fail with a readable message.

import { execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));

export const SERVER_BIN = process.env.CHATTERPRO_BIN || debugServerBin();
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const WAIT_MS = 10_000;
export const TIME_PATTERN = /^\d{1,2}:\d{2} (am|pm)$/;
export const LOST_TEXT = 'Connection lost — reconnecting…';

/**
 * The debug server in cargo's target directory, asked of cargo itself, so
 * that CARGO_TARGET_DIR and a configured build.target-dir are honoured.
 */
function debugServerBin() {
  const metadata = execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], {
    cwd: path.resolve(here, '../..'),
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  return path.join(JSON.parse(metadata).target_directory, 'debug', 'chatterpro');
}

const LISTENING = /listening on (http:\/\/127\.0\.0\.1:(\d+))/;
const ANSI = /\x1b\[[0-9;]*m/g;

/**
 * Starts the server binary on `port` (0 = any) with a SQLite file in `dbDir`
 * (and any further command-line `args`) and resolves once it printed its
 * `listening on http://127.0.0.1:PORT` line.
 */
export function startServer({ dbDir, port = 0, args = [] }) {
  const child = spawn(SERVER_BIN, [
    '--addr', `127.0.0.1:${port}`,
    '--database-url', `sqlite://${dbDir}/e2e.db`,
    ...args,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });

  const logs = [];
  const remember = (line) => {
    logs.push(line);
    if (logs.length > 200) logs.shift();
  };
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  readline.createInterface({ input: child.stderr }).on('line', remember);
  const stdout = readline.createInterface({ input: child.stdout });

  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      error.message += `\n--- server output ---\n${logs.join('\n')}`;
      reject(error);
    };
    const timer = setTimeout(
      () => fail(new Error(`${SERVER_BIN} printed no "listening on" line within 20 s`)),
      20_000,
    );
    child.once('error', (error) => fail(error));
    exited.then(({ code, signal }) => fail(new Error(`server exited early (code ${code}, signal ${signal})`)));
    stdout.on('line', (raw) => {
      const line = raw.replace(ANSI, '');
      remember(line);
      const match = LISTENING.exec(line);
      if (!match || settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({
        url: match[1],
        port: Number(match[2]),
        logs,
        async stop(signal = 'SIGTERM') {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          const timeout = new Promise((r) => setTimeout(r, 5_000, 'timeout'));
          if (await Promise.race([exited, timeout]) === 'timeout') {
            child.kill('SIGKILL');
            await exited;
          }
        },
      });
    });
  });
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
  });
}

/**
 * Runs `body` with a fresh temp dir, a server on it (given `serverArgs`)
 * and a way to open pages. Afterwards closes every page and the server; on
 * failure prints the server's output and saves screenshots of the open
 * pages under screenshots/.
 */
export async function withChat(browser, testName, body, { serverArgs = [] } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'chatterpro-e2e-'));
  const contexts = [];
  const pages = [];
  const consoleErrors = [];
  const h = {
    dir,
    server: await startServer({ dbDir: dir, args: serverArgs }),
    consoleErrors,
    async newPage({ viewport = { width: 1200, height: 760 } } = {}) {
      const context = await browser.newContext({ viewport });
      contexts.push(context);
      const page = await context.newPage();
      page.setDefaultTimeout(WAIT_MS);
      page.on('console', (msg) => {
        if (msg.type() === 'error') consoleErrors.push(msg.text());
      });
      page.on('pageerror', (error) => consoleErrors.push(`uncaught: ${error.message}`));
      pages.push(page);
      return page;
    },
    /** Opens the app as `name` and joins `room` (typed as a new room when `create`). */
    async join(name, room, { create = false, viewport, page } = {}) {
      const p = page ?? await h.newPage({ viewport });
      await p.goto(h.server.url);
      await joinFrom(p, name, room, { create });
      return p;
    },
  };
  try {
    await body(h);
  } catch (error) {
    const shots = path.join(here, 'screenshots');
    await mkdir(shots, { recursive: true });
    const slug = testName.replace(/[^a-z0-9]+/gi, '-').toLowerCase();
    for (const [i, page] of pages.entries()) {
      await page.screenshot({ path: path.join(shots, `${slug}-${i}.png`) }).catch(() => {});
    }
    console.error(`--- server output (${testName}) ---\n${h.server.logs.join('\n')}`);
    if (consoleErrors.length > 0) console.error(`--- browser console errors ---\n${consoleErrors.join('\n')}`);
    throw error;
  } finally {
    for (const context of contexts) await context.close().catch(() => {});
    await h.server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Fills the join form on an already loaded page and waits for the chat view. */
export async function joinFrom(page, name, room, { create = false } = {}) {
  await page.fill('#nickname', name);
  if (create) {
    await page.fill('#new-room', room);
  } else {
    await page.fill('#new-room', '');
    await page.selectOption('#room-select', room);
  }
  await page.click('#join-button');
  await page.locator('#chat-view').waitFor({ state: 'visible' });
  await waitForText(page, '#status', 'Connected');
}

/** Types `text` into the message box and presses Enter. */
export async function send(page, text) {
  await page.fill('#message-input', text);
  await page.press('#message-input', 'Enter');
}

/**
 * Waits until `fn(arg)` evaluated in the page returns `expected` (deep
 * equality via JSON); on timeout fails showing what the page had instead.
 * Polls from here rather than with page.waitForFunction, whose in-page
 * polling compiles the predicate from a string, which the app's CSP forbids.
 */
export async function waitForValue(page, fn, arg, expected, what, timeout = WAIT_MS) {
  const want = JSON.stringify(expected);
  const deadline = Date.now() + timeout;
  let got;
  for (;;) {
    got = JSON.stringify(await page.evaluate(fn, arg));
    if (got === want) return;
    if (Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${what}: expected ${want}, got ${got} after ${timeout} ms`);
}

export function waitForText(page, selector, text, timeout = WAIT_MS) {
  return waitForValue(page, (s) => document.querySelector(s)?.textContent ?? null, selector, text,
    `text of ${selector}`, timeout);
}

export function waitForTexts(page, selector, texts, timeout = WAIT_MS) {
  return waitForValue(page, (s) => [...document.querySelectorAll(s)].map((e) => e.textContent), selector,
    texts, `texts of ${selector}`, timeout);
}

export function waitForNotice(page, text) {
  return waitForValue(
    page,
    (t) => [...document.querySelectorAll('#messages li.notice .text')].some((e) => e.textContent === t),
    text, true, `notice "${text}"`,
  );
}

/** Waits for a message with exactly `text` and returns {author, time, text, seq} of each such message. */
export async function waitForMessage(page, text) {
  await waitForValue(
    page,
    (t) => [...document.querySelectorAll('#messages li.message .text')].some((e) => e.textContent === t),
    text, true, `message "${text}"`,
  );
  return messagesWithText(page, text);
}

export function messagesWithText(page, text) {
  return page.evaluate((t) => [...document.querySelectorAll('#messages li.message')]
    .filter((li) => li.querySelector('.text')?.textContent === t)
    .map((li) => ({
      author: li.querySelector('.author')?.textContent,
      time: li.querySelector('.time')?.textContent,
      text: li.querySelector('.text')?.textContent,
      seq: Number(li.dataset.seq),
    })), text);
}

/** data-seq of every message shown, in DOM order. */
export function shownSeqs(page) {
  return page.$$eval('#messages li.message', (items) => items.map((li) => Number(li.dataset.seq)));
}
