//! `chatterpro bench`: a load generator that speaks protocol v1 to any
//! ChatterPro server. Scenarios live in their own modules.

use clap::{Args, Subcommand};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {}

/// Runs a scenario; prints a human summary and one JSON line.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.scenario {}
}
