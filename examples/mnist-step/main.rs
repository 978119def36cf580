//! Times one training step (forward, backward, SGD update) of each Table 1 model at batch 128
//! on random images and labels, as the peer script `odenet_mnist_step.py` does, and prints a
//! Markdown table. Peak memory is the process's resident high-water mark above the state after
//! set-up (CPU), or the CUDA device's memory in use after the steps as `nvidia-smi` would show
//! it is not readable from Candle, so it is left out there.
//!
//! The last column counts the tensors one step creates, in the forward pass, the backward pass
//! and the update (one more, untimed step): nearly every one is an op's output, so on a GPU a
//! kernel launch (views — reshapes, narrows, transposes — are the exception). It is a
//! measure of launch overhead that needs no GPU.

#[path = "../common/mod.rs"]
mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::status_mib;
use node_adjoint::{AdjointNorm, AdjointOptions, CheckpointOptions, ReversibleOptions};
use node_models::{
    init, Basis, Gradient, MnistModel, ModelKind, OdeConfig, Rng, SgdConfig, SgdMomentum,
    TimeDependence,
};
use std::time::Instant;

/// Time one MNIST training step per model.
#[derive(Parser, Debug)]
struct Args {
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Models (and variants) to time: odenet-adjoint, odenet-direct, odenet-checkpoint,
    /// odenet-reversible, odenet-galerkin (Galerkin convolutions on Legendre polynomials to
    /// degree 2, the adjoint), rknet, resnet, mlp.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "odenet-adjoint,odenet-direct,rknet,resnet"
    )]
    variants: Vec<String>,
    /// Timed steps (after warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Leave the C allocator's settings as they are (by default it is told to keep freed
    /// memory, see `node_kernels::keep_freed_memory`), to measure what that setting does.
    #[arg(long)]
    system_malloc: bool,
    /// On CUDA, keep cudarc's two events per buffer (by default they are skipped, see
    /// `node_kernels::skip_unused_cuda_events`), to measure what skipping them does.
    #[arg(long)]
    cuda_events: bool,
    /// Time the step recorded once as a CUDA graph and replayed (`node_kernels::GraphStep`):
    /// fixed-step variants (rknet, resnet, mlp) on CUDA only.
    #[arg(long)]
    cuda_graph: bool,
    /// Run one variant in this process and print one table row (used by the driver so that
    /// each variant's peak memory is its own).
    #[arg(long)]
    child: Option<String>,
}

fn run_variant(variant: &str, args: &Args) -> Result<String> {
    let dev = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context("no usable CUDA device")?,
        d => anyhow::bail!("unknown device {d}"),
    };
    if !args.cuda_events {
        node_kernels::skip_unused_cuda_events(&dev);
    }
    let (kind, gradient) = match variant {
        "odenet-adjoint" => (
            ModelKind::OdeNet,
            Gradient::Adjoint(AdjointOptions::default().norm(AdjointNorm::Seminorm)),
        ),
        "odenet-direct" => (ModelKind::OdeNet, Gradient::Backprop),
        "odenet-galerkin" => (
            ModelKind::OdeNet,
            Gradient::Adjoint(AdjointOptions::default().norm(AdjointNorm::Seminorm)),
        ),
        "odenet-checkpoint" => (
            ModelKind::OdeNet,
            Gradient::Checkpoint(CheckpointOptions::default()),
        ),
        "odenet-reversible" => (
            ModelKind::OdeNet,
            Gradient::Reversible(ReversibleOptions::default()),
        ),
        "rknet" => (ModelKind::RkNet, Gradient::Backprop),
        "resnet" => (ModelKind::ResNet, Gradient::Backprop),
        "mlp" => (ModelKind::Mlp, Gradient::Backprop),
        v => anyhow::bail!("unknown variant {v}"),
    };
    if args.cuda_graph && (kind == ModelKind::OdeNet || args.device != "cuda") {
        anyhow::bail!("--cuda-graph: fixed-step variants (rknet, resnet, mlp) on CUDA only");
    }
    let mut cfg = OdeConfig::default_for(kind);
    cfg.gradient = gradient;
    if variant == "odenet-galerkin" {
        let basis = Basis::Legendre {
            degree: 2,
            span: (0.0, 1.0),
        };
        cfg.time = TimeDependence::Galerkin(basis);
    }
    // A recorded step reads nothing back: no final check of the fixed-step solve.
    cfg.opts = cfg.opts.check_finite(!args.cuda_graph);
    let varmap = VarMap::new();
    let model = MnistModel::new(
        kind,
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let mut rng = Rng::new(0);
    init::pytorch_default(&varmap, &mut rng)?;
    let mut opt = SgdMomentum::new(node_adjoint::sorted_vars(&varmap), SgdConfig::default())?;
    let x = rng.uniform_tensor(&[args.batch_size, 1, 28, 28], 0.0, 1.0, DType::F32, &dev)?;
    let labels: Vec<u32> = (0..args.batch_size).map(|_| rng.below(10) as u32).collect();
    let y = Tensor::from_vec(labels, args.batch_size, &dev)?;
    let base = status_mib("VmRSS:");
    let mut times = vec![];
    let (mut nfe_f, mut nfe_b) = (0, 0);
    let mut step = |xy: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
        let (logits, stats) = model.forward(&xy[0])?;
        let loss = candle_nn::loss::cross_entropy(&logits, &xy[1])?;
        opt.backward_step(&loss)?;
        if let Some(b) = stats.block {
            nfe_f = b.nfe_forward;
            nfe_b = b.nfe_backward();
        }
        Ok(vec![loss])
    };
    let xy = [x.clone(), y.clone()];
    // With --cuda-graph, the first warm-up step records the graph (and runs once eagerly).
    let mut graph: Option<node_kernels::GraphStep> = None;
    let warmup = args.warmup.max(usize::from(args.cuda_graph));
    for i in 0..warmup + args.reps {
        dev.synchronize()?;
        let start = Instant::now();
        match &mut graph {
            Some(g) => {
                g.run(&xy)?;
            }
            None if args.cuda_graph => {
                graph = Some(node_kernels::GraphStep::capture(&xy, &mut step)?.0)
            }
            None => {
                step(&xy)?;
            }
        }
        dev.synchronize()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    drop(graph);
    // One more step, untimed, counting the tensors created between its phases.
    let mark = || tensor_count(&dev);
    let m0 = mark()?;
    let (logits, _) = model.forward(&x)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
    let m1 = mark()?;
    let grads = loss.backward()?;
    let m2 = mark()?;
    opt.step(&grads)?;
    let m3 = mark()?;
    // Each mark creates one tensor itself.
    let tensors = match (m0, m1, m2, m3) {
        (Some(a), Some(b), Some(c), Some(d)) => {
            format!("{} / {} / {}", b - a - 1, c - b - 1, d - c - 1)
        }
        _ => "–".into(),
    };
    times.sort_by(|a, b| a.total_cmp(b));
    let mem = if dev.is_cpu() {
        format!("{:.1}", status_mib("VmHWM:") - base)
    } else {
        "–".into()
    };
    Ok(format!(
        "| {variant} | {} | {nfe_f} | {nfe_b} | {:.1} | {:.1} | {mem} | {tensors} |",
        varmap
            .all_vars()
            .iter()
            .map(|v| v.elem_count())
            .sum::<usize>(),
        times[times.len() / 2],
        times[0]
    ))
}

/// How many tensors this process has created so far, read from the id of a new one (Candle
/// numbers tensors from one counter; the id is read from its `Debug` form, `TensorId(n)`, and
/// `None` if that form changes).
fn tensor_count(dev: &Device) -> Result<Option<usize>> {
    let id = format!("{:?}", Tensor::zeros((), DType::F32, dev)?.id());
    Ok(id
        .strip_prefix("TensorId(")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.parse().ok()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let kept = !args.system_malloc && node_kernels::keep_freed_memory();
    if let Some(v) = &args.child {
        println!("{}", run_variant(v, &args)?);
        return Ok(());
    }
    let events = if args.device == "cuda" {
        format!(
            ", CUDA events per buffer: {}, step recorded as a CUDA graph: {}",
            args.cuda_events, args.cuda_graph
        )
    } else {
        String::new()
    };
    println!(
        "MNIST training step, batch {}, f32, device {}, {} threads, allocator keeps freed memory: {kept}{events}; median and min of {} steps after {} warm-up",
        args.batch_size,
        args.device,
        candle_core::utils::get_num_threads(),
        args.reps,
        args.warmup
    );
    println!("| variant | parameters | NFE fwd | NFE bwd | median ms | min ms | peak RSS above set-up (MiB) | tensors per step: fwd / bwd / update |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe()?;
    for v in &args.variants {
        let out = std::process::Command::new(&exe)
            .args([
                "--device",
                &args.device,
                "--reps",
                &args.reps.to_string(),
                "--warmup",
                &args.warmup.to_string(),
            ])
            .args(["--batch-size", &args.batch_size.to_string(), "--child", v])
            .args(args.system_malloc.then_some("--system-malloc"))
            .args(args.cuda_events.then_some("--cuda-events"))
            .args(args.cuda_graph.then_some("--cuda-graph"))
            .output()?;
        if out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stdout));
        } else {
            println!(
                "| {v} | failed: {} |",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
    }
    Ok(())
}
