//! Group-commit throughput of the SQLite store: batches of messages appended
//! in one transaction each (WAL, `synchronous=FULL`, a real file), the way the
//! hub's writer commits under load. `cargo bench --bench storage`.

use std::time::Instant;

use chatterpro::domain::{AuthorId, MessageText, Nickname, RoomName};
use chatterpro::storage::{MessageStore, NewMessage, SqliteStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn batch(rooms: &[RoomName], size: usize, counter: &mut u64) -> Vec<NewMessage> {
    let from = Nickname::parse("bench").unwrap();
    (0..size)
        .map(|i| {
            *counter += 1;
            NewMessage {
                room: rooms[i % rooms.len()].clone(),
                id: format!("bench-{counter}"),
                from: from.clone(),
                author: AuthorId::random(),
                text: MessageText::parse("a typical chat message of some forty bytes").unwrap(),
                ts: 1_764_111_111_111,
                key: None,
            }
        })
        .collect()
}

fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = runtime.block_on(SqliteStore::connect(&url)).unwrap();
    let rooms: Vec<RoomName> = (0..1000)
        .map(|i| RoomName::parse(&format!("room {i}")).unwrap())
        .collect();
    let mut counter = 0;
    let mut group = c.benchmark_group("group commit");
    // (messages per transaction, rooms they spread over): the hub's writer
    // under load commits what 2 ms brought, e.g. ~20 sends from 20 rooms.
    for (size, spread) in [(1usize, 100usize), (20, 1000), (64, 100), (512, 100)] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(
            format!("{size} messages over {spread} rooms per transaction"),
            |b| {
                b.iter_custom(|iters| {
                    let batches: Vec<_> = (0..iters)
                        .map(|_| batch(&rooms[..spread], size, &mut counter))
                        .collect();
                    let start = Instant::now();
                    runtime.block_on(async {
                        for batch in batches {
                            store.append(batch).await.unwrap();
                        }
                    });
                    start.elapsed()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
