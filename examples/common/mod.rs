//! Helpers shared by the example binaries (included with `#[path]`).
#![allow(dead_code)]

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::ProgressBar;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The variable `name` of `varmap` (one a `VarBuilder` created there).
pub fn var(varmap: &candle_nn::VarMap, name: &str) -> Result<candle_core::Var> {
    varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the variables' lock is poisoned"))?
        .get(name)
        .cloned()
        .with_context(|| format!("no variable `{name}`"))
}

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
    /// Checkpointed backprop: backprop's gradients from steps replayed from stored states
    /// (less memory than backprop, about one more forward pass).
    Checkpoint,
    /// The adjoint method with `y(t)` read from the forward solve's dense output instead of
    /// solved backwards: no drift from the backward solve and works on stiff problems;
    /// memory grows with the forward steps.
    Interpolated,
    /// Reversible backprop: the method made algebraically reversible and its steps walked
    /// back; backprop's exact gradients with memory independent of the steps, for about
    /// twice the forward evaluations (explicit methods only).
    Reversible,
}

impl GradientArg {
    /// The library's gradient mode: the adjoint's reverse solve at `rtol` and `atol` (solved
    /// backwards, or interpolated), backprop, checkpointing with `checkpoint`'s states, or
    /// reversible backprop.
    pub fn gradient(
        self,
        rtol: f64,
        atol: f64,
        checkpoint: &CheckpointArgs,
    ) -> node_models::Gradient {
        match self {
            GradientArg::Adjoint | GradientArg::Interpolated => node_models::Gradient::Adjoint(
                node_adjoint::AdjointOptions::default()
                    .tolerances(rtol, atol)
                    .state(self.adjoint_state()),
            ),
            GradientArg::Backprop => node_models::Gradient::Backprop,
            GradientArg::Checkpoint => node_models::Gradient::Checkpoint(checkpoint.options()),
            GradientArg::Reversible => {
                node_models::Gradient::Reversible(node_adjoint::ReversibleOptions::default())
            }
        }
    }

    /// The adjoint's state for `--gradient adjoint` (solved backwards) and `interpolated`.
    pub fn adjoint_state(self) -> node_adjoint::AdjointState {
        if self == GradientArg::Interpolated {
            node_adjoint::AdjointState::Interpolated
        } else {
            node_adjoint::AdjointState::Backsolve
        }
    }
}

/// `--checkpoints`, for `--gradient checkpoint`.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct CheckpointArgs {
    /// With `--gradient checkpoint`: the most states the forward solve stores; the backward
    /// pass replays the steps between them (fewer states, less memory, longer stretches).
    #[arg(long, default_value_t = std::num::NonZeroUsize::new(64).expect("64 > 0"))]
    pub checkpoints: std::num::NonZeroUsize,
}

impl CheckpointArgs {
    /// The library's options.
    pub fn options(&self) -> node_adjoint::CheckpointOptions {
        node_adjoint::CheckpointOptions::default().checkpoints(self.checkpoints.get())
    }
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

/// The device as the metrics name it: `cpu`, `metal`, or on CUDA [`cuda_label`] of
/// `NODE_CUDA_KERNELS_OFF` and whether the step was recorded as a CUDA graph.
pub fn device_label(dev: &Device, graph: bool) -> String {
    if dev.is_cuda() {
        cuda_label(
            &std::env::var("NODE_CUDA_KERNELS_OFF").unwrap_or_default(),
            graph,
        )
    } else if dev.is_metal() {
        "metal".into()
    } else {
        "cpu".into()
    }
}

/// `cuda`, with ` (CUDA graph)` when the step was recorded as one, and ` (own kernels off:
/// conv lincomb)` when some of the project's own CUDA kernels were turned off (`off`, as
/// `NODE_CUDA_KERNELS_OFF` lists them): a table made from the metrics then says how each
/// model was trained. Names only, space-separated: the label goes into JSON unescaped, and
/// scripts split its fields at commas.
pub fn cuda_label(off: &str, graph: bool) -> String {
    let names: Vec<String> = off
        .split(',')
        .map(|n| {
            n.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect();
    let mut label = String::from("cuda");
    if graph {
        label.push_str(" (CUDA graph)");
    }
    if !names.is_empty() {
        label.push_str(&format!(" (own kernels off: {})", names.join(" ")));
    }
    label
}

/// Writes `out_dir/summary.json`, one object of `fields` (values already JSON), atomically.
pub fn write_summary(out_dir: &Path, fields: &[(&str, String)]) -> Result<()> {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let path = out_dir.join("summary.json");
    let tmp = out_dir.join("summary.json.tmp");
    std::fs::write(&tmp, format!("{{{}}}\n", body.join(",")))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints where a run left its files, one `what: path` after the other
/// (`metrics: …, checkpoint: …, summary: …`).
pub fn print_outputs(files: &[(&str, &Path)]) {
    let listed: Vec<String> = files
        .iter()
        .map(|(what, path)| format!("{what}: {}", path.display()))
        .collect();
    println!("{}", listed.join(", "));
}

/// A number as JSON (`null` when not finite).
pub fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

#[cfg(test)]
mod tests {
    use super::cuda_label;

    #[test]
    fn cuda_label_names_the_kernels_off() {
        assert_eq!(cuda_label("", false), "cuda");
        assert_eq!(cuda_label(" , ", false), "cuda");
        assert_eq!(
            cuda_label("lincomb,conv", false),
            "cuda (own kernels off: lincomb conv)"
        );
        assert_eq!(
            cuda_label("all", true),
            "cuda (CUDA graph) (own kernels off: all)"
        );
        assert_eq!(
            cuda_label("a\"b,c}d", false),
            "cuda (own kernels off: ab cd)"
        );
        assert_eq!(cuda_label("", true), "cuda (CUDA graph)");
    }
}
