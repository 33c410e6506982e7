// By hand, not a test: what guests' stored identities cost, and that a
// restart gives every name back to its token and to nobody else.
//
// Run: cargo build --release && cd tests/e2e &&
//   CHATTERPRO_BIN=$PWD/../../target/release/chatterpro \
//   node --experimental-websocket names-restart-bench.mjs [GUESTS] [CONCURRENCY]
//
// 1. GUESTS clients say hello with new names (each a stored guest);
// 2. the server is stopped (SIGTERM) and started again on the same database;
// 3. every client says hello again with its token (all at once, as pages
//    reconnecting after a restart do), then as many strangers try the same
//    names without a token.

import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer } from './harness.mjs';

// One address opens every connection here: lift the per-address limits.
process.env.CHATTERPRO_CONNS_PER_IP_PER_MINUTE = '1000000';
process.env.CHATTERPRO_MAX_CONNS_PER_IP = '100000';

const GUESTS = Number(process.argv[2] ?? 2000);
const CONCURRENCY = Number(process.argv[3] ?? 50);

/** Opens a socket, says hello, returns [reply, milliseconds]; closes the socket. */
function hello(url, name, session) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let started;
    ws.onopen = () => {
      started = performance.now();
      ws.send(JSON.stringify(session ? { type: 'hello', name, session } : { type: 'hello', name }));
    };
    ws.onmessage = (event) => {
      const reply = JSON.parse(event.data);
      const took = performance.now() - started;
      ws.close();
      resolve([reply, took]);
    };
    ws.onerror = () => reject(new Error(`socket error for ${name}`));
  });
}

/** Runs `task(i)` for i in 0..n, `CONCURRENCY` at a time; returns results and seconds. */
async function run(n, task) {
  const results = new Array(n);
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < n) {
      const i = next;
      next += 1;
      results[i] = await task(i);
    }
  }));
  return [results, (performance.now() - started) / 1000];
}

function summary(what, results, seconds) {
  const times = results.map(([, ms]) => ms).sort((a, b) => a - b);
  const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))].toFixed(2);
  console.log(`${what}: ${results.length} in ${seconds.toFixed(2)} s `
    + `(${(results.length / seconds).toFixed(0)}/s), hello→reply p50 ${at(0.5)} ms, p99 ${at(0.99)} ms`);
}

const dir = await mkdtemp(path.join(tmpdir(), 'chatterpro-names-'));
try {
  let server = await startServer({ dbDir: dir });
  let ws = `${server.url.replace('http', 'ws')}/ws`;
  const [first, firstSecs] = await run(GUESTS, (i) => hello(ws, `guest ${i}`));
  summary('new names', first, firstSecs);
  const refused = first.filter(([reply]) => reply.type !== 'welcome');
  if (refused.length > 0) throw new Error(`refused: ${JSON.stringify(refused[0])}`);
  await server.stop();

  server = await startServer({ dbDir: dir });
  ws = `${server.url.replace('http', 'ws')}/ws`;
  const [back, backSecs] = await run(GUESTS, (i) => hello(ws, `guest ${i}`, first[i][0].session));
  summary('reclaimed after a restart', back, backSecs);
  const same = back.filter(([reply], i) => reply.type === 'welcome'
    && reply.session === first[i][0].session && reply.author === first[i][0].author).length;
  console.log(`  same token and author id: ${same}/${GUESTS}`);
  const [strangers, strangerSecs] = await run(GUESTS, (i) => hello(ws, `GUEST ${i}`));
  summary('strangers without the token', strangers, strangerSecs);
  const taken = strangers.filter(([reply]) => reply.code === 'name_taken').length;
  console.log(`  name_taken: ${taken}/${GUESTS}`);
  await server.stop();
  const db = (await stat(path.join(dir, 'e2e.db'))).size + (await stat(path.join(dir, 'e2e.db-wal')).catch(() => ({ size: 0 }))).size;
  console.log(`database with ${GUESTS} guests: ${(db / 1024).toFixed(0)} KiB`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
