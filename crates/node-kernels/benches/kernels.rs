//! Per-op CPU benchmark: this crate's kernels beside Candle's stock ops and, when `PEER_PYTHON`
//! names a Python with torch, PyTorch's, measured in the same run (f32, medians).
//!
//! `cargo bench -p node-kernels --bench kernels [-- FILTER]` (`PEER_PYTHON=...` for the PyTorch
//! column, `STOCK=0` to skip Candle's stock ops, `SYSTEM_MALLOC=1` to leave
//! glibc's malloc settings alone; `scripts/bench-kernels.sh` sets PEER_PYTHON).
//!
//! Candle's `matmul` row is Candle's own op: this crate turns on the `gemm` crate's AVX-512
//! kernels (`x86-v4`), and Cargo features unify, so every `matmul` in the build uses them.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

/// Median seconds of `f` after warm-up, over at least 7 runs and ~1 s.
fn time(f: &mut Op) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut samples = vec![];
    let start = Instant::now();
    while samples.len() < 7 || (start.elapsed().as_secs_f64() < 1.0 && samples.len() < 500) {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Forward, or forward + backward of `Σ r·op(inputs)` when `vars` is non-empty.
fn run(out: Result<Tensor>, r: Option<&Tensor>) -> Result<()> {
    let out = out?;
    match r {
        Some(r) => {
            (out * r)?.sum_all()?.backward()?;
        }
        None => {
            out.sum_all()?.to_scalar::<f32>()?;
        }
    }
    Ok(())
}

fn torch_times() -> HashMap<String, f64> {
    let Ok(py) = std::env::var("PEER_PYTHON") else {
        return HashMap::new();
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench-kernels-torch.py"
    );
    let out = match Command::new(&py).arg(script).output() {
        Ok(o) if o.status.success() => o,
        other => {
            eprintln!("PyTorch column not measured ({py} {script}): {other:?}");
            return HashMap::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, ms) = l.rsplit_once('\t')?;
            Some((name.to_string(), ms.parse().ok()?))
        })
        .collect()
}

/// Rows whose name contains the first argument (all without one), e.g.
/// `cargo bench -p node-kernels --bench kernels -- conv2d`.
fn selected(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    filter.is_none_or(|f| name.contains(&f))
}

type Op = Box<dyn FnMut() -> Result<()>>;

fn main() -> Result<()> {
    // As the project's binaries do (see `node_kernels::alloc`); `SYSTEM_MALLOC=1` to compare.
    if std::env::var("SYSTEM_MALLOC").map_or(true, |v| v != "1") {
        node_kernels::keep_freed_memory();
    }
    let dev = &Device::Cpu;
    let torch = torch_times();
    // (name, FLOPs, ours, Candle's stock op)
    let mut ops: Vec<(&str, f64, Op, Option<Op>)> = vec![];

    // sgemm 2048³: Candle's matmul (on the gemm crate, AVX-512 kernels enabled by this crate).
    let a = Tensor::randn(0f32, 1.0, (2048, 2048), dev)?;
    let b = Tensor::randn(0f32, 1.0, (2048, 2048), dev)?;
    ops.push((
        "sgemm 2048x2048x2048",
        2.0 * 2048f64.powi(3),
        Box::new(move || a.matmul(&b).map(|_| ())),
        None,
    ));

    // The ODE-Net block's conv: 128×65×6×6 → 64 channels, 3×3, pad 1.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (128, 65, 6, 6), dev)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 0.1, (64, 65, 3, 3), dev)?)?;
    let r = Tensor::randn(0f32, 1.0, (128, 64, 6, 6), dev)?;
    let flops = 2.0 * (128 * 36 * 64 * 65 * 9) as f64;
    fn ours(x: &Tensor, k: &Tensor) -> Result<Tensor> {
        node_kernels::conv2d(x, k, 1, 1, 1, 1)
    }
    fn stock(x: &Tensor, k: &Tensor) -> Result<Tensor> {
        x.conv2d(k, 1, 1, 1, 1)
    }
    let (xd, kd) = (x.as_tensor().detach(), k.as_tensor().detach());
    ops.push((
        "conv2d 128x65x6x6 -> 64, 3x3 pad 1",
        flops,
        {
            let (x, k) = (xd.clone(), kd.clone());
            Box::new(move || run(ours(&x, &k), None))
        },
        {
            let (x, k) = (xd.clone(), kd.clone());
            Some(Box::new(move || run(stock(&x, &k), None)))
        },
    ));
    ops.push((
        "conv2d forward + backward (same)",
        3.0 * flops,
        {
            let (x, k, r) = (x.clone(), k.clone(), r.clone());
            Box::new(move || run(ours(&x, &k), Some(&r)))
        },
        {
            let (x, k, r) = (x.clone(), k.clone(), r.clone());
            Some(Box::new(move || run(stock(&x, &k), Some(&r))))
        },
    ));

    // The downsampling convs, forward + backward: the first (the images need no gradient) and
    // the 4×4 stride-2 conv at 26×26.
    let x1 = Tensor::rand(0f32, 1.0, (128, 1, 28, 28), dev)?;
    let k1 = Var::from_tensor(&Tensor::randn(0f32, 0.3, (64, 1, 3, 3), dev)?)?;
    let r1 = Tensor::randn(0f32, 1.0, (128, 64, 26, 26), dev)?;
    ops.push((
        "conv2d fwd+bwd 128x1x28x28 -> 64, 3x3 (no input grad)",
        3.0 * 2.0 * (128 * 26 * 26 * 64 * 9) as f64,
        {
            let (x, k, r) = (x1.clone(), k1.clone(), r1.clone());
            Box::new(move || run(node_kernels::conv2d(&x, &k, 0, 1, 1, 1), Some(&r)))
        },
        {
            let (x, k, r) = (x1.clone(), k1.clone(), r1.clone());
            Some(Box::new(move || run(x.conv2d(&k, 0, 1, 1, 1), Some(&r))))
        },
    ));
    let x2 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (128, 64, 26, 26), dev)?)?;
    let k2 = Var::from_tensor(&Tensor::randn(0f32, 0.03, (64, 64, 4, 4), dev)?)?;
    let r2 = Tensor::randn(0f32, 1.0, (128, 64, 13, 13), dev)?;
    ops.push((
        "conv2d fwd+bwd 128x64x26x26 -> 64, 4x4 s2 p1",
        3.0 * 2.0 * (128 * 13 * 13 * 64 * 64 * 16) as f64,
        {
            let (x, k, r) = (x2.clone(), k2.clone(), r2.clone());
            Box::new(move || run(node_kernels::conv2d(&x, &k, 1, 2, 1, 1), Some(&r)))
        },
        {
            let (x, k, r) = (x2.clone(), k2.clone(), r2.clone());
            Some(Box::new(move || run(x.conv2d(&k, 1, 2, 1, 1), Some(&r))))
        },
    ));

    // The block's GroupNorm: 128×64×6×6, 32 groups.
    let xg = Var::from_tensor(&Tensor::randn(0f32, 1.0, (128, 64, 6, 6), dev)?)?;
    let w = Var::from_tensor(&Tensor::ones(64, DType::F32, dev)?)?;
    let bias = Var::from_tensor(&Tensor::zeros(64, DType::F32, dev)?)?;
    let gn = candle_nn::GroupNorm::new(
        w.as_tensor().clone(),
        bias.as_tensor().clone(),
        64,
        32,
        1e-5,
    )?;
    let xgd = xg.as_tensor().detach();
    ops.push((
        "group_norm 128x64x6x6, 32 groups",
        0.0,
        {
            let (x, w, b) = (xgd.clone(), w.clone(), bias.clone());
            Box::new(move || run(node_kernels::group_norm(&x, 32, &w, &b, 1e-5), None))
        },
        {
            let (x, gn) = (xgd.clone(), gn.clone());
            Some(Box::new(move || run(gn.forward(&x), None)))
        },
    ));
    ops.push((
        "group_norm forward + backward (same)",
        0.0,
        {
            let (x, w, b, r) = (xg.clone(), w.clone(), bias.clone(), r.clone());
            Box::new(move || run(node_kernels::group_norm(&x, 32, &w, &b, 1e-5), Some(&r)))
        },
        {
            let (x, r) = (xg.clone(), r.clone());
            Some(Box::new(move || run(gn.forward(&x), Some(&r))))
        },
    ));

    // The downsampling's GroupNorm at 26×26.
    ops.push((
        "group_norm fwd+bwd 128x64x26x26, 32 groups",
        0.0,
        {
            let (x, w, b, r) = (x2.clone(), w.clone(), bias.clone(), x2.as_tensor().detach());
            Box::new(move || run(node_kernels::group_norm(&x, 32, &w, &b, 1e-5), Some(&r)))
        },
        None,
    ));

    // The ode_demo MLP's hidden activation.
    let xt = Tensor::randn(0f32, 1.0, (1024, 50), dev)?;
    ops.push((
        "tanh 1024x50",
        0.0,
        {
            let x = xt.clone();
            Box::new(move || run(node_kernels::tanh(&x), None))
        },
        {
            let x = xt.clone();
            Some(Box::new(move || run(x.tanh(), None)))
        },
    ));

    // The other activations on the same shape, and ReLU forward + backward at the size of
    // the MNIST models' first activation.
    type Unary = fn(&Tensor) -> Result<Tensor>;
    let acts: [(&str, Unary, Unary); 5] = [
        ("relu 1024x50", node_kernels::relu, |x| x.relu()),
        (
            "sigmoid 1024x50",
            node_kernels::sigmoid,
            candle_nn::ops::sigmoid,
        ),
        ("softplus 1024x50", node_kernels::softplus, |x| {
            x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
        }),
        ("elu 1024x50", |x| node_kernels::elu(x, 1.0), |x| x.elu(1.0)),
        ("exp 1024x50", node_kernels::exp, |x| x.exp()),
    ];
    for (name, ours, stock) in acts {
        let (a, b) = (xt.clone(), xt.clone());
        ops.push((
            name,
            0.0,
            Box::new(move || run(ours(&a), None)),
            Some(Box::new(move || run(stock(&b), None))),
        ));
    }
    ops.push((
        "relu fwd+bwd 128x64x26x26",
        0.0,
        {
            let (x, r) = (x2.clone(), r1.clone());
            Box::new(move || run(node_kernels::relu(&x), Some(&r)))
        },
        {
            let (x, r) = (x2.clone(), r1.clone());
            Some(Box::new(move || run(x.relu(), Some(&r))))
        },
    ));

    // What the "fwd+bwd" rows' harness costs by itself: `Σ r·x` forward and backward with no
    // op in between (Candle's mul, sum, their backward and gradient accumulation), at the
    // GroupNorm and ReLU rows' shapes. No stock column: it is Candle on both sides.
    for (name, x, r) in [
        (
            "harness: sum(r*x) fwd+bwd 128x64x6x6",
            xg.clone(),
            r.clone(),
        ),
        (
            "harness: sum(r*x) fwd+bwd 128x64x26x26",
            x2.clone(),
            r1.clone(),
        ),
    ] {
        ops.push((
            name,
            0.0,
            Box::new(move || run(Ok(x.as_tensor().clone()), Some(&r))),
            None,
        ));
    }

    // ode_demo's two layers, the first and last of an FFJORD field on 8-D data, MNIST's head,
    // and small square products, forward + backward (input, weight, bias).
    for (name, m, k, n) in [
        ("linear fwd+bwd 1024x2 -> 50", 1024, 2usize, 50usize),
        ("linear fwd+bwd 1024x50 -> 2", 1024, 50, 2),
        ("linear fwd+bwd 512x8 -> 64", 512, 8, 64),
        ("linear fwd+bwd 512x64 -> 8", 512, 64, 8),
        ("linear fwd+bwd 128x64 -> 10", 128, 64, 10),
        ("linear fwd+bwd 128x16 -> 16", 128, 16, 16),
        ("linear fwd+bwd 32x32 -> 32", 32, 32, 32),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (n, k), dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, n, dev)?)?;
        let r = Tensor::randn(0f32, 1.0, (m, n), dev)?;
        let stock = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        ops.push((
            name,
            2.0 * 3.0 * (m * k * n) as f64,
            {
                let (x, r) = (x.clone(), r.clone());
                Box::new(move || run(node_kernels::linear(&x, &w, Some(&b)), Some(&r)))
            },
            Some(Box::new(move || run(stock.forward(&x), Some(&r)))),
        ));
    }

    let stock_too = std::env::var("STOCK").map_or(true, |v| v != "0");
    let mut rows = vec![];
    for (name, flops, ours, stock) in ops.iter_mut() {
        if selected(name) {
            let stock = match stock {
                Some(s) if stock_too => Some(time(s)?),
                _ => None,
            };
            rows.push((*name, time(ours)?, stock, *flops));
        }
    }

    println!(
        "CPU kernels, f32, {} threads; median ms (GFLOP/s)",
        candle_core::utils::get_num_threads()
    );
    println!("| op | PyTorch | ours | ours / PyTorch | Candle stock | stock / ours |");
    println!("|---|---:|---:|---:|---:|---:|");
    let fmt = |s: f64, flops: f64| {
        if flops > 0.0 {
            format!("{:.3} ({:.0})", s * 1e3, flops / s / 1e9)
        } else {
            format!("{:.3}", s * 1e3)
        }
    };
    for (name, ours, stock, flops) in rows {
        let pt = torch.get(name).map(|ms| ms / 1e3);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            pt.map_or("-".into(), |p| fmt(p, flops)),
            fmt(ours, flops),
            pt.map_or("-".into(), |p| format!("{:.2}", ours / p)),
            stock.map_or("(same op)".into(), |s| fmt(s, flops)),
            stock.map_or("-".into(), |s| format!("{:.1}", s / ours)),
        );
    }
    Ok(())
}
