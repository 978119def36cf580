//! Helpers shared by the example binaries (included with `#[path]`).
#![allow(dead_code)]

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::ProgressBar;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `--device` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

/// `--gradient` choices: how an ODE solve is differentiated.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum GradientArg {
    /// The adjoint method (constant memory in the number of steps).
    Adjoint,
    /// Backprop through the solver's operations.
    Backprop,
}

/// The requested device, or the best available: CUDA or Metal when compiled in and present,
/// else the CPU. (`Device::cuda_if_available` errors instead of falling back when the library
/// loads without a GPU, so the fallback is explicit here.)
pub fn pick_device(arg: Option<DeviceArg>) -> Result<Device> {
    match arg {
        Some(DeviceArg::Cpu) => Ok(Device::Cpu),
        Some(DeviceArg::Cuda) => Device::new_cuda(0).context(
            "--device cuda: no usable CUDA device (was the binary built with --features cuda?)",
        ),
        Some(DeviceArg::Metal) => Device::new_metal(0).context(
            "--device metal: no usable Metal device (was the binary built with --features metal?)",
        ),
        None => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// `cpu`, `cuda` or `metal`, for metrics files.
pub fn device_name(dev: &Device) -> &'static str {
    match dev {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal),
/// where indicatif would drop the line.
pub fn log(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        println!("{msg}");
    } else {
        pb.println(msg);
    }
}

/// A field of `/proc/self/status` in MiB (`VmRSS:` now, `VmHWM:` the peak); NaN elsewhere
/// than Linux.
pub fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Set by SIGINT/SIGTERM: stop after the step in progress, with a checkpoint.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("second signal: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("signal: stopping after this step, with a checkpoint");
    })
    .context("installing the SIGINT/SIGTERM handler")?;
    Ok(flag)
}
/// The exit status of a run stopped with a checkpoint: 0 when asked to by
/// `--stop-after-steps`, 130 after a signal.
pub fn stopped(signal: &AtomicBool) -> ExitCode {
    if signal.load(Ordering::SeqCst) {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}
