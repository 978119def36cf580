//! Helpers shared by the benchmarks.
#![allow(dead_code)]

use candle_core::Result;
use std::time::Instant;

/// The value after `--reps` on the command line, or `default`.
pub fn reps_arg(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median seconds of `f` over `reps` runs, and its last result.
pub fn time<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut ts = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let s = Instant::now();
        last = Some(f()?);
        ts.push(s.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    Ok((ts[ts.len() / 2], last.expect("reps > 0")))
}
