//! Writes to one connection's socket: vectored, non-blocking, from any
//! byte of a run of frames.
//!
//! Two parties write a connection's socket, never at once (the outbox's
//! lock decides): whoever pushes a frame while nobody else is writing,
//! through [`DirectWrite`], and the connection's socket writer (in `conn`)
//! for what the socket did not take then, through [`write_now`] and
//! [`write_all`]. Frames arrive already framed ([`Frame`]): a write is one
//! `writev` of their bytes, with no copy, no per-recipient UTF-8 check and
//! no intermediate buffer.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};

use tokio::net::TcpStream;

use super::{Frame, Position, advance};

/// Most frames in one vectored write (well under the kernel's 1024-slice
/// limit; 256 small frames are ~50 KiB).
pub const WRITE_MAX: usize = 256;

/// The connection's socket as the outbox sees it.
pub trait DirectWrite: Send + Sync {
    /// Writes as much of `frames` as the socket takes now, without waiting,
    /// the first frame from byte `offset` on. Returns where it stopped: the
    /// index of the first frame not completely written and how many of its
    /// bytes were (`(frames.len(), 0)` when all went out).
    fn write_now(&self, frames: &[Frame], offset: usize) -> io::Result<Position>;

    /// The socket's descriptor, for a round's writes handed to the kernel
    /// together (`uring`); `None` writes one by one through
    /// [`Self::write_now`]. It must stay open for as long as this value lives.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A connection's socket, written by its socket writer and, through the
/// outbox, by whoever pushes while nothing is queued.
impl DirectWrite for TcpStream {
    fn write_now(&self, frames: &[Frame], offset: usize) -> io::Result<Position> {
        Ok(write_now(self, frames, (0, offset))?.unwrap_or((frames.len(), 0)))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

/// Writes as much as the socket takes now, from `at` on. `None` when
/// everything went out.
pub fn write_now(
    stream: &TcpStream,
    frames: &[Frame],
    mut at: Position,
) -> io::Result<Option<Position>> {
    while at.0 < frames.len() {
        match write_some(stream, &frames[at.0..], at.1) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => at = advance(frames, at, written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(at)),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Writes every frame from `at` on, waiting for the socket as needed.
pub async fn write_all(stream: &TcpStream, frames: &[Frame], mut at: Position) -> io::Result<()> {
    while at.0 < frames.len() {
        match write_some(stream, &frames[at.0..], at.1) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => at = advance(frames, at, written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One vectored write of `frames`, the first from `offset` on. Most writes
/// carry a handful of frames: their slices live on the stack; only a long
/// run pays for a `Vec` (filling 256 slices for every write would cost
/// more than the usual write's own bookkeeping).
fn write_some(stream: &TcpStream, frames: &[Frame], offset: usize) -> io::Result<usize> {
    const ON_STACK: usize = 16;
    let count = frames.len().min(WRITE_MAX);
    let slice = |i: usize| -> IoSlice<'_> {
        let wire = frames[i].wire();
        IoSlice::new(if i == 0 { &wire[offset..] } else { wire })
    };
    if count <= ON_STACK {
        let mut slices = [IoSlice::new(&[]); ON_STACK];
        for (i, out) in slices[..count].iter_mut().enumerate() {
            *out = slice(i);
        }
        stream.try_write_vectored(&slices[..count])
    } else {
        let slices: Vec<IoSlice<'_>> = (0..count).map(slice).collect();
        stream.try_write_vectored(&slices)
    }
}
