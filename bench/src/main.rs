//! The `chatterpro-bench` binary: parses the scenario and runs it
//! (everything else is in the library, which the smoke tests drive).

use clap::Parser;

/// The server's allocator, so that the bench's per-frame allocations in its
/// receive loops cost what they cost when its figures were taken
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chatterpro_bench::run(chatterpro_bench::BenchArgs::parse()).await
}
