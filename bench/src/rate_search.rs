//! `chatterpro-bench rate-search`: the highest offered rate at which a fan-out run stays
//! correct and its p99 delivery latency stays under a bound. Each step is a
//! full `fanout` run on fresh rooms; the rate doubles until a step fails,
//! then the search bisects between the best passing and the first failing rate.

use std::fmt;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::fanout::{self, FanoutArgs};

#[derive(Debug, Clone, Args)]
pub struct RateSearchArgs {
    /// The fan-out set-up; `--rate` is where the search starts.
    #[command(flatten)]
    pub fanout: FanoutArgs,

    /// The p99 delivery latency a rate must stay under.
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    pub p99: Duration,

    /// Fan-out runs to make.
    #[arg(long, default_value_t = 6)]
    pub steps: u32,
}

/// One step of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate: f64,
    pub delivered_per_s: f64,
    pub p99_ms: f64,
    /// Correct (no loss, duplicates, reordering, unexpected errors) and under the bound.
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateSearchReport {
    pub scenario: &'static str,
    pub url: String,
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub p99_bound_ms: f64,
    pub steps: Vec<Step>,
    /// The highest offered rate that passed (0 if none did).
    pub best_rate: f64,
    pub best_delivered_per_s: f64,
    pub ok: bool,
}

impl RateSearchReport {
    pub fn failures(&self) -> Vec<String> {
        if self.best_rate > 0.0 {
            Vec::new()
        } else {
            vec![format!(
                "no rate tried kept p99 under {} ms without loss",
                self.p99_bound_ms
            )]
        }
    }
}

impl fmt::Display for RateSearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rate search: {} rooms × {} members, {} senders per room, p99 bound {} ms, against {}",
            self.rooms, self.members, self.senders, self.p99_bound_ms, self.url
        )?;
        for step in &self.steps {
            writeln!(
                f,
                "  offered {:>10.1} msg/s → delivered {:>12.1}/s, p99 {:>9.2} ms  {}",
                step.rate,
                step.delivered_per_s,
                step.p99_ms,
                if step.passed { "pass" } else { "FAIL" }
            )?;
        }
        write!(
            f,
            "  best: {:.1} msg/s offered, {:.1} deliveries/s",
            self.best_rate, self.best_delivered_per_s
        )
    }
}

pub async fn run(args: RateSearchArgs) -> anyhow::Result<RateSearchReport> {
    let bound_ms = args.p99.as_secs_f64() * 1000.0;
    let mut steps = Vec::new();
    let (mut best, mut best_delivered) = (0.0_f64, 0.0_f64);
    let mut failing: Option<f64> = None;
    let mut rate = args.fanout.rate.max(1.0);
    for step in 0..args.steps {
        let mut run_args = args.fanout.clone();
        run_args.rate = rate;
        run_args.room_prefix = format!("{}s{step}-", args.fanout.room_prefix);
        let report = fanout::run(run_args).await?;
        let passed = report.ok && report.latency.p99_ms <= bound_ms;
        // Progress on stderr: stdout ends with the report's JSON line.
        eprintln!(
            "rate-search step {step}: rate {rate}/s, p99 {:.2} ms, {}",
            report.latency.p99_ms,
            if passed { "passed" } else { "failed" }
        );
        steps.push(Step {
            rate,
            delivered_per_s: report.delivered_per_s,
            p99_ms: report.latency.p99_ms,
            passed,
        });
        if passed {
            best = rate;
            best_delivered = report.delivered_per_s;
        } else {
            failing = Some(failing.map_or(rate, |f| f.min(rate)));
        }
        rate = match failing {
            None => rate * 2.0,
            Some(fail) if best > 0.0 => (best + fail) / 2.0,
            Some(fail) => fail / 2.0,
        };
    }
    let report = RateSearchReport {
        scenario: "rate-search",
        url: args.fanout.target.url.clone(),
        rooms: args.fanout.rooms,
        members: args.fanout.members,
        senders: args.fanout.senders,
        p99_bound_ms: bound_ms,
        steps,
        best_rate: best,
        best_delivered_per_s: best_delivered,
        ok: best > 0.0,
    };
    Ok(report)
}
