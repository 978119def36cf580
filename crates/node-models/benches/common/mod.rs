//! What the training-step benches share: their command line and their statistics.

use candle_core::{Device, Result};

/// `--reps N` (default `default_reps`) and `--device cpu|cuda` (default cpu).
///
/// # Errors
/// An unknown device, or a CUDA device that cannot be opened.
pub fn reps_and_device(default_reps: usize) -> Result<(usize, Device)> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    };
    let reps = arg("--reps")
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_reps);
    let dev = match arg("--device") {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::new_cuda(0)?,
        Some(d) => candle_core::bail!("--device {d}: cpu or cuda"),
    };
    node_kernels::skip_unused_cuda_events(&dev);
    Ok((reps.max(1), dev))
}

/// The median and the minimum.
pub fn median_min(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(|a, b| a.total_cmp(b));
    (times[times.len() / 2], times[0])
}
