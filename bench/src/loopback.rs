//! `chatterpro-bench loopback`: what this machine charges for one small socket write
//! on loopback, with no chat server involved — the floor under every
//! server figure in docs/performance.md. One thread writes to `--conns`
//! loopback sockets, one write of `--frames` × `--frame-bytes` bytes to each
//! per round, `--rounds` rounds a second; another thread reads them all
//! (tokio, as the bench's receivers do). It reports the writing thread's CPU
//! time per write, which includes, on loopback, the receiving side's TCP
//! work and the wake-ups of the reader. With `--io-uring` each round's
//! writes go to the kernel in calls of up to 256 sends, as the server's room
//! deliveries do (the server's `outbox/uring.rs`): the difference is what one system call
//! per write costs beyond TCP's own work.

use std::fmt::Display;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::probe;

#[derive(Debug, Clone, Args)]
pub struct LoopbackArgs {
    /// Sockets written to, one write each per round.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rounds per second (a round writes once to every socket).
    #[arg(long, default_value_t = 100.0)]
    pub rounds: f64,
    /// Frames per write.
    #[arg(long, default_value_t = 1)]
    pub frames: usize,
    /// Bytes per frame (a chat message frame is about 150–250).
    #[arg(long, default_value_t = 200)]
    pub frame_bytes: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Core for the writing thread (the server's, in docs/performance.md).
    #[arg(long, default_value_t = 0)]
    pub writer_core: usize,
    /// Core for the reading thread (the bench's).
    #[arg(long, default_value_t = 1)]
    pub reader_core: usize,
    /// Send each round through io_uring, up to 256 sends per system call,
    /// instead of one `write` per socket (Linux).
    #[arg(long)]
    pub io_uring: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopbackReport {
    pub scenario: &'static str,
    pub conns: usize,
    pub io_uring: bool,
    pub frames_per_write: usize,
    pub bytes_per_write: usize,
    pub writes: u64,
    pub writes_per_s: f64,
    pub writer_cpu_s: f64,
    pub writer_busy_pct: f64,
    pub us_per_write: f64,
}

impl LoopbackReport {
    pub fn failures(&self) -> Vec<String> {
        if self.writes == 0 {
            vec!["no write completed".to_owned()]
        } else {
            Vec::new()
        }
    }
}

impl Display for LoopbackReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loopback: {} sockets, {} frame(s) = {} bytes per write, {}",
            self.conns,
            self.frames_per_write,
            self.bytes_per_write,
            if self.io_uring {
                "sent through io_uring"
            } else {
                "one write() each"
            }
        )?;
        write!(
            f,
            "  {:.0} writes/s; writing thread {:.1} % busy, {:.2} µs of CPU per write",
            self.writes_per_s, self.writer_busy_pct, self.us_per_write
        )
    }
}

fn pin(core: usize) {
    if let Some(id) = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|id| id.id == core)
    {
        core_affinity::set_for_current(id);
    }
}

pub fn run(args: LoopbackArgs) -> anyhow::Result<LoopbackReport> {
    probe::check_fd_budget(2 * args.conns as u64)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(args.conns);
    let mut writers = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        reader.set_nonblocking(true)?;
        readers.push(reader);
        writers.push(writer);
    }
    let reader_core = args.reader_core;
    std::thread::spawn(move || {
        pin(reader_core);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime for the reader");
        runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for reader in readers {
                let Ok(mut reader) = tokio::net::TcpStream::from_std(reader) else {
                    continue;
                };
                tasks.spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
            while tasks.join_next().await.is_some() {}
        });
    });
    let writer = std::thread::spawn(move || -> anyhow::Result<(u64, Duration, Duration)> {
        pin(args.writer_core);
        // Leaked: io_uring sends may outlive a failed round (see `uring`).
        let payload: &'static [u8] = vec![b'x'; args.frames * args.frame_bytes].leak();
        let period = Duration::from_secs_f64(1.0 / args.rounds.max(0.001));
        std::thread::sleep(Duration::from_millis(200));
        let cpu_start = probe::thread_cpu_time().unwrap_or_default();
        let start = Instant::now();
        let mut next = start;
        let mut writes = 0;
        let mut ring = if args.io_uring {
            Some(uring::Rounds::new()?)
        } else {
            None
        };
        while start.elapsed() < args.duration {
            match &mut ring {
                Some(ring) => ring.write_all(&mut writers, payload)?,
                None => {
                    for socket in &mut writers {
                        socket.write_all(payload)?;
                    }
                }
            }
            writes += writers.len() as u64;
            next += period;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let cpu = probe::thread_cpu_time().unwrap_or_default() - cpu_start;
        Ok((writes, cpu, start.elapsed()))
    });
    let (writes, cpu, elapsed) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))??;
    let elapsed = elapsed.as_secs_f64();
    Ok(LoopbackReport {
        scenario: "loopback",
        conns: args.conns,
        io_uring: args.io_uring,
        frames_per_write: args.frames,
        bytes_per_write: args.frames * args.frame_bytes,
        writes,
        writes_per_s: writes as f64 / elapsed,
        writer_cpu_s: cpu.as_secs_f64(),
        writer_busy_pct: cpu.as_secs_f64() / elapsed * 100.0,
        us_per_write: cpu.as_secs_f64() * 1e6 / writes.max(1) as f64,
    })
}

/// Rounds of sends through io_uring: one `io_uring_enter` per 256 sockets.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod uring {
    use std::io::{self, Write};
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;

    use io_uring::{IoUring, opcode, types};

    const ENTRIES: u32 = 256;

    pub struct Rounds(IoUring);

    impl Rounds {
        pub fn new() -> io::Result<Self> {
            Ok(Self(IoUring::new(ENTRIES)?))
        }

        /// Sends `payload` once to every socket.
        /// `payload` is `'static`: after a failed `io_uring_enter`, sends
        /// may still be in flight when this returns.
        pub fn write_all(
            &mut self,
            sockets: &mut [TcpStream],
            payload: &'static [u8],
        ) -> io::Result<()> {
            for chunk in sockets.chunks_mut(ENTRIES as usize) {
                {
                    let mut queue = self.0.submission();
                    for (i, socket) in chunk.iter().enumerate() {
                        let send = opcode::Send::new(
                            types::Fd(socket.as_raw_fd()),
                            payload.as_ptr(),
                            payload.len() as u32,
                        )
                        .build()
                        .user_data(i as u64);
                        // SAFETY: `payload` lives for the whole process;
                        // the kernel holds its own reference to each socket
                        // while a send is in flight.
                        unsafe { queue.push(&send) }.expect("a chunk fits the ring");
                    }
                }
                let mut results = vec![None; chunk.len()];
                let mut done = 0;
                while done < chunk.len() {
                    match self.0.submit_and_wait(chunk.len() - done) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                    for completion in self.0.completion() {
                        results[completion.user_data() as usize] = Some(completion.result());
                        done += 1;
                    }
                }
                for (socket, sent) in chunk.iter_mut().zip(results) {
                    match sent {
                        Some(sent) if sent < 0 => return Err(io::Error::from_raw_os_error(-sent)),
                        // A short send: the rest the usual way.
                        Some(sent) => socket.write_all(&payload[sent as usize..])?,
                        None => unreachable!("every send was reaped"),
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod uring {
    use std::io;
    use std::net::TcpStream;

    pub struct Rounds;

    impl Rounds {
        pub fn new() -> io::Result<Self> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring is Linux-only",
            ))
        }

        pub fn write_all(&mut self, _: &mut [TcpStream], _: &'static [u8]) -> io::Result<()> {
            unreachable!("never made")
        }
    }
}
