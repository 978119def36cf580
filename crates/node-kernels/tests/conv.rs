//! `conv2d` matches Candle's `Tensor::conv2d`, values and gradients (input and kernel), on odd
//! shapes, batch 1, strides, padding, dilation, non-contiguous inputs, f32 and f64.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::Draws;

/// `max |a − b| / max |b|`.
fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?;
    let m = b.abs()?.flatten_all()?.max(0)?;
    let r = (d / m)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(if r.is_nan() { 0.0 } else { r })
}

struct Case {
    x: (usize, usize, usize, usize),
    k: (usize, usize, usize, usize),
    padding: usize,
    stride: usize,
    dilation: usize,
}

const CASES: &[Case] = &[
    // The ODE-Net block's conv (batch 3 for speed) and its downsampling convs.
    Case {
        x: (3, 65, 6, 6),
        k: (64, 65, 3, 3),
        padding: 1,
        stride: 1,
        dilation: 1,
    },
    Case {
        x: (2, 1, 28, 28),
        k: (8, 1, 3, 3),
        padding: 0,
        stride: 1,
        dilation: 1,
    },
    // 8·4·4 = 128 values per unfolded row: a multiple of 256 bytes, so the weight gradient
    // takes the padded-row path.
    Case {
        x: (2, 8, 26, 26),
        k: (8, 8, 4, 4),
        padding: 1,
        stride: 2,
        dilation: 1,
    },
    // Batch 1, odd sizes, non-square kernels, dilation, stride 3, 1×1.
    Case {
        x: (1, 3, 7, 5),
        k: (5, 3, 3, 2),
        padding: 2,
        stride: 1,
        dilation: 1,
    },
    Case {
        x: (1, 2, 9, 11),
        k: (3, 2, 3, 3),
        padding: 1,
        stride: 3,
        dilation: 2,
    },
    Case {
        x: (4, 5, 5, 5),
        k: (7, 5, 1, 1),
        padding: 0,
        stride: 1,
        dilation: 1,
    },
    Case {
        x: (2, 3, 4, 4),
        k: (2, 3, 4, 4),
        padding: 0,
        stride: 1,
        dilation: 1,
    },
    // Rows of at most 16 values take the CPU's direct kernels: a stride and a dilation (the
    // generic loops), and rows wider than one pass of 32 output columns (AVX2 for f32).
    Case {
        x: (3, 1, 11, 9),
        k: (4, 1, 3, 3),
        padding: 2,
        stride: 2,
        dilation: 2,
    },
    Case {
        x: (2, 2, 7, 45),
        k: (5, 2, 2, 4),
        padding: 1,
        stride: 1,
        dilation: 1,
    },
    // The CPU kernels cut the batch into blocks of ≤ 512 KB of unfolded input (6 of these
    // images): 37 images make several blocks per thread and a short last one.
    Case {
        x: (37, 65, 6, 6),
        k: (16, 65, 3, 3),
        padding: 1,
        stride: 1,
        dilation: 1,
    },
];

fn check(x: &Tensor, k: &Tensor, c: &Case, tol: f64) -> Result<()> {
    let ours = node_kernels::conv2d(x, k, c.padding, c.stride, c.dilation, 1)?;
    let want = x.conv2d(k, c.padding, c.stride, c.dilation, 1)?;
    let what = format!("x {:?} k {:?} {:?}", c.x, c.k, x.dtype());
    assert!(max_rel_diff(&ours, &want)? < tol, "{what}: values");
    // Gradients of Σ r·conv(x, k) for a random r, against Candle's autograd.
    let (vx, vk) = (Var::from_tensor(x)?, Var::from_tensor(k)?);
    let r = Draws::new(91).randn_like(&ours)?;
    let loss = |t: Tensor| -> Result<_> { Ok((t * &r)?.sum_all()?.backward()?) };
    let g = loss(node_kernels::conv2d(
        vx.as_tensor(),
        vk.as_tensor(),
        c.padding,
        c.stride,
        c.dilation,
        1,
    )?);
    let g_ref = loss(
        vx.as_tensor()
            .conv2d(vk.as_tensor(), c.padding, c.stride, c.dilation, 1)?,
    );
    let g = match g {
        Ok(g) => g,
        // Where our op *is* Candle's (Metal), Candle 0.11's conv2d backward fails when the
        // stride does not divide the padded input evenly: the same error on both sides.
        Err(_) if x.device().is_metal() && g_ref.is_err() => return Ok(()),
        Err(e) => return Err(e),
    };
    for (name, v) in [("dx", &vx), ("dk", &vk)] {
        let want = match &g_ref {
            Ok(g_ref) => g_ref.get(v).unwrap().clone(),
            // On the CPU that Candle failure leaves ours to check against something else: the
            // loss is linear in x and in k, so a unit finite difference of Candle's forward is
            // its exact gradient (up to round-off).
            Err(_) => finite_difference(x, k, c, &r, name == "dx")?,
        };
        let err = max_rel_diff(g.get(v).unwrap(), &want)?;
        assert!(err < tol, "{what}: {name} off by {err:e}");
    }
    Ok(())
}

/// The gradient of `Σ r·conv(x, k)` in `x` (or `k`) by unit steps of Candle's forward, in f64.
fn finite_difference(x: &Tensor, k: &Tensor, c: &Case, r: &Tensor, in_x: bool) -> Result<Tensor> {
    let dtype = r.dtype();
    let (x, k, r) = (
        x.to_dtype(DType::F64)?,
        k.to_dtype(DType::F64)?,
        r.to_dtype(DType::F64)?,
    );
    let loss = |x: &Tensor, k: &Tensor| -> Result<f64> {
        let y = x.conv2d(k, c.padding, c.stride, c.dilation, 1)?;
        Ok((y * &r)?.sum_all()?.to_scalar::<f64>()?)
    };
    let base = loss(&x, &k)?;
    let t = if in_x { &x } else { &k };
    let n = t.elem_count();
    let mut grad = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = vec![0.0f64; n];
        e[i] = 1.0;
        let step = (t + Tensor::from_vec(e, t.shape(), t.device())?)?;
        let l = if in_x {
            loss(&step, &k)?
        } else {
            loss(&x, &step)?
        };
        grad.push(l - base);
    }
    Ok(Tensor::from_vec(grad, t.shape(), t.device())?.to_dtype(dtype)?)
}

fn conv2d_matches_candle(dev: &Device) -> Result<()> {
    let draws = Draws::new(305);
    for dtype in [DType::F32, DType::F64] {
        // Sums of up to ~600 products: f32 round-off, not an approximation.
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        for c in CASES {
            let x = draws.randn(0f32, 1.0, c.x, dev)?.to_dtype(dtype)?;
            let k = draws.randn(0f32, 1.0, c.k, dev)?.to_dtype(dtype)?;
            check(&x, &k, c, tol)?;
        }
        // Non-contiguous input and kernel: transposed spatial axes, a narrowed batch.
        let c = &CASES[3];
        let x = draws
            .randn(0f32, 1.0, (1, 3, 5, 7), dev)?
            .to_dtype(dtype)?
            .transpose(2, 3)?;
        let k = draws
            .randn(0f32, 1.0, (5, 3, 2, 3), dev)?
            .to_dtype(dtype)?
            .transpose(2, 3)?;
        assert!(!x.is_contiguous() && !k.is_contiguous());
        check(&x, &k, c, tol)?;
        let c = &CASES[0];
        let x = draws
            .randn(0f32, 1.0, (5, 65, 6, 6), dev)?
            .to_dtype(dtype)?
            .narrow(0, 1, 3)?;
        let k = draws.randn(0f32, 1.0, c.k, dev)?.to_dtype(dtype)?;
        check(&x, &k, c, tol)?;
    }
    Ok(())
}

/// The fused bias against Candle's conv2d + broadcast_add, values and all three gradients.
fn conv2d_bias_matches_candle(dev: &Device) -> Result<()> {
    let draws = Draws::new(304);
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        for c in [
            &CASES[0], &CASES[1], &CASES[2], &CASES[3], &CASES[5], &CASES[7], &CASES[8],
        ] {
            let x = Var::from_tensor(&draws.randn(0f32, 1.0, c.x, dev)?.to_dtype(dtype)?)?;
            let k = Var::from_tensor(&draws.randn(0f32, 1.0, c.k, dev)?.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&draws.randn(0f32, 1.0, c.k.0, dev)?.to_dtype(dtype)?)?;
            let ours = node_kernels::conv2d_bias(&x, &k, &b, c.padding, c.stride, c.dilation, 1)?;
            let want = x
                .conv2d(&k, c.padding, c.stride, c.dilation, 1)?
                .broadcast_add(&b.reshape((1, c.k.0, 1, 1))?)?;
            let what = format!("x {:?} k {:?} {dtype:?} with bias", c.x, c.k);
            assert!(max_rel_diff(&ours, &want)? < tol, "{what}: values");
            let r = Draws::new(92).randn_like(&ours)?;
            let g = (ours * &r)?.sum_all()?.backward()?;
            let g_ref = (want * &r)?.sum_all()?.backward()?;
            for (name, v) in [("dx", &x), ("dk", &k), ("dbias", &b)] {
                let err = max_rel_diff(g.get(v).unwrap(), g_ref.get(v).unwrap())?;
                assert!(err < tol, "{what}: {name} off by {err:e}");
            }
        }
    }
    let x = Tensor::zeros((1, 3, 5, 5), DType::F32, dev)?;
    let k = Tensor::zeros((4, 3, 3, 3), DType::F32, dev)?;
    let bad = Tensor::zeros(3, DType::F32, dev)?;
    let err = node_kernels::conv2d_bias(&x, &k, &bad, 0, 1, 1, 1).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
    Ok(())
}

/// `conv2d_time` against the concatenation it replaces, `cat([t, x], 1)` and Candle's conv2d
/// (+ bias): values, and the gradients of the input, kernel and bias, for times in and out of
/// [0, 1], on the cases' geometries (the kernel with the time channel added), a
/// non-contiguous input, and a row of ≤ 16 values (which must not take the CPU's direct
/// kernels, which know no time channel).
fn conv2d_time_matches_concatenation(dev: &Device) -> Result<()> {
    let draws = Draws::new(303);
    let small = Case {
        x: (2, 1, 5, 5),
        k: (3, 1, 2, 2),
        padding: 1,
        stride: 1,
        dilation: 1,
    };
    let cases = [
        &CASES[0], &CASES[2], &CASES[3], &CASES[4], &CASES[5], &CASES[7], &CASES[9], &small,
    ];
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        for (i, c) in cases.iter().enumerate() {
            let t = [0.0, 0.37, -2.5][i % 3];
            let randn = |d: (usize, usize, usize, usize)| -> Result<Tensor> {
                Ok(draws.randn(0f32, 1.0, d, dev)?.to_dtype(dtype)?)
            };
            let x = if i % 2 == 1 {
                let (b, ch, h, w) = c.x;
                randn((b, ch, w, h))?.transpose(2, 3)?
            } else {
                randn(c.x)?
            };
            let x = Var::from_tensor(&x)?;
            let (co, ci, kh, kw) = c.k;
            let k = Var::from_tensor(&randn((co, ci + 1, kh, kw))?)?;
            let b = Var::from_tensor(&draws.randn(0f32, 1.0, co, dev)?.to_dtype(dtype)?)?;
            let (bs, h, w) = (c.x.0, c.x.2, c.x.3);
            let time = Tensor::full(t, (bs, 1, h, w), dev)?.to_dtype(dtype)?;
            let cat = Tensor::cat(&[&time, x.as_tensor()], 1)?;
            for bias in [None, Some(b.as_tensor())] {
                let ours =
                    node_kernels::conv2d_time(&x, t, &k, bias, c.padding, c.stride, c.dilation)?;
                let mut want = cat.conv2d(&k, c.padding, c.stride, c.dilation, 1)?;
                if let Some(b) = bias {
                    want = want.broadcast_add(&b.reshape((1, co, 1, 1))?)?;
                }
                let what = format!(
                    "x {:?} k {:?} {dtype:?} t {t}, strided {}, bias {}",
                    c.x,
                    c.k,
                    i % 2 == 1,
                    bias.is_some()
                );
                assert!(max_rel_diff(&ours, &want)? < tol, "{what}: values");
                let r = Draws::new(93).randn_like(&ours)?;
                let g = (ours * &r)?.sum_all()?.backward()?;
                let g_ref = match (want * &r)?.sum_all()?.backward() {
                    Ok(g) => g,
                    // Candle 0.11's conv2d backward fails where the stride does not divide
                    // the padded input evenly (see `check`); the values were checked.
                    Err(_) if c.stride > 1 => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut vars = vec![("dx", &x), ("dk", &k)];
                if bias.is_some() {
                    vars.push(("dbias", &b));
                }
                for (name, v) in vars {
                    let err = max_rel_diff(g.get(v).unwrap(), g_ref.get(v).unwrap())?;
                    assert!(err < tol, "{what}: {name} off by {err:e}");
                }
            }
        }
    }
    // A kernel without the time channel.
    let x = Tensor::zeros((1, 3, 5, 5), DType::F32, dev)?;
    let k = Tensor::zeros((4, 3, 3, 3), DType::F32, dev)?;
    let err = node_kernels::conv2d_time(&x, 0.5, &k, None, 1, 1, 1).unwrap_err();
    assert!(err.to_string().contains("channel"), "{err}");
    Ok(())
}

candle_core::test_device!(
    conv2d_time_matches_concatenation,
    conv2d_time_cpu,
    conv2d_time_cuda,
    conv2d_time_metal
);

candle_core::test_device!(
    conv2d_bias_matches_candle,
    conv2d_bias_cpu,
    conv2d_bias_cuda,
    conv2d_bias_metal
);

candle_core::test_device!(conv2d_matches_candle, conv2d_cpu, conv2d_cuda, conv2d_metal);

/// Only the inputs that are variables (or computed from them) get a gradient: a network's
/// first convolution on plain images (the CPU op then skips the input-gradient product), a
/// frozen kernel or bias. The gradients that are computed are unchanged.
fn conv2d_grads_only_for_tracked_inputs(dev: &Device) -> Result<()> {
    let draws = Draws::new(302);
    let c = &CASES[2];
    let x = draws.randn(0f32, 1.0, c.x, dev)?;
    let k = Var::from_tensor(&draws.randn(0f32, 1.0, c.k, dev)?)?;
    let b = draws.randn(0f32, 1.0, c.k.0, dev)?;
    let ours = node_kernels::conv2d_bias(&x, &k, &b, c.padding, c.stride, c.dilation, 1)?;
    let want = x
        .conv2d(&k, c.padding, c.stride, c.dilation, 1)?
        .broadcast_add(&b.reshape((1, c.k.0, 1, 1))?)?;
    let r = Draws::new(94).randn_like(&ours)?;
    let g = (ours * &r)?.sum_all()?.backward()?;
    let g_ref = (want * &r)?.sum_all()?.backward()?;
    assert!(max_rel_diff(g.get(&k).unwrap(), g_ref.get(&k).unwrap())? < 1e-5);
    assert!(g.get(&x).is_none() && g.get(&b).is_none());
    // A frozen kernel: only the input's gradient.
    let xv = Var::from_tensor(&x)?;
    let kt = k.as_tensor().detach();
    let ours = node_kernels::conv2d(&xv, &kt, c.padding, c.stride, c.dilation, 1)?;
    let want = xv.conv2d(&kt, c.padding, c.stride, c.dilation, 1)?;
    let g = (ours * &r)?.sum_all()?.backward()?;
    let g_ref = (want * &r)?.sum_all()?.backward()?;
    assert!(max_rel_diff(g.get(&xv).unwrap(), g_ref.get(&xv).unwrap())? < 1e-5);
    assert!(g.get(&kt).is_none());
    Ok(())
}

candle_core::test_device!(
    conv2d_grads_only_for_tracked_inputs,
    conv2d_tracked_cpu,
    conv2d_tracked_cuda,
    conv2d_tracked_metal
);

#[test]
fn conv2d_rejects_bad_shapes() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((2, 3, 5, 5), DType::F32, dev)?;
    let err = |x: &Tensor, k: &Tensor, padding, stride, dilation| {
        node_kernels::conv2d(x, k, padding, stride, dilation, 1)
            .unwrap_err()
            .to_string()
    };
    let k = Tensor::zeros((4, 2, 3, 3), DType::F32, dev)?;
    assert!(
        err(&x, &k, 0, 1, 1).contains("channels"),
        "{}",
        err(&x, &k, 0, 1, 1)
    );
    let k = Tensor::zeros((4, 3, 7, 7), DType::F32, dev)?;
    assert!(err(&x, &k, 0, 1, 1).contains("does not fit"));
    assert!(err(&x, &Tensor::zeros((4, 3, 3, 3), DType::F32, dev)?, 0, 0, 1).contains("stride"));
    let k = Tensor::zeros((4, 3, 3), DType::F32, dev)?;
    assert!(err(&x, &k, 0, 1, 1).contains("rank 4"));
    let k = Tensor::zeros((4, 3, 3, 3), DType::F64, dev)?;
    assert!(err(&x, &k, 0, 1, 1).contains("F64"));
    // Empty channels or images (padding alone would give an output): refused. An empty
    // batch is fine.
    let k = Tensor::zeros((4, 3, 3, 3), DType::F32, dev)?;
    for (x, k) in [
        (
            Tensor::zeros((2, 0, 5, 5), DType::F32, dev)?,
            Tensor::zeros((4, 0, 3, 3), DType::F32, dev)?,
        ),
        (x.clone(), Tensor::zeros((0, 3, 3, 3), DType::F32, dev)?),
        (Tensor::zeros((2, 3, 0, 5), DType::F32, dev)?, k.clone()),
    ] {
        assert!(
            err(&x, &k, 1, 1, 1).contains("empty axis"),
            "{}",
            err(&x, &k, 1, 1, 1)
        );
    }
    let empty = Tensor::zeros((0, 3, 5, 5), DType::F32, dev)?;
    assert_eq!(
        node_kernels::conv2d(&empty, &k, 1, 1, 1, 1)?.dims(),
        [0, 4, 5, 5]
    );
    // A kernel that just fits with padding gives a 1×1 output.
    let k = Tensor::zeros((4, 3, 7, 7), DType::F32, dev)?;
    assert_eq!(
        node_kernels::conv2d(&x, &k, 1, 1, 1, 1)?.dims(),
        [2, 4, 1, 1]
    );
    // Where Candle's convolution runs (f16 here, and groups), the same checks come first: it
    // panicked on a zero stride (a division by zero) and on a kernel larger than the padded
    // input (a subtraction below zero), in all three functions.
    let xh = x.to_dtype(DType::F16)?;
    let k3 = Tensor::zeros((4, 3, 3, 3), DType::F16, dev)?;
    let k7 = Tensor::zeros((4, 3, 7, 7), DType::F16, dev)?;
    let kt = Tensor::zeros((4, 4, 7, 7), DType::F16, dev)?;
    let bias = Tensor::zeros(4, DType::F16, dev)?;
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(node_kernels::conv2d(&xh, &k3, 0, 0, 1, 1)).contains("stride"));
    assert!(msg(node_kernels::conv2d(&xh, &k7, 0, 1, 1, 1)).contains("does not fit"));
    let with_bias = node_kernels::conv2d_bias(&xh, &k7, &bias, 0, 1, 1, 1);
    assert!(msg(with_bias).contains("does not fit"));
    let timed = node_kernels::conv2d_time(&xh, 0.5, &kt, Some(&bias), 0, 1, 1);
    assert!(msg(timed).contains("does not fit"));
    assert_eq!(
        node_kernels::conv2d(&xh, &k7, 1, 1, 1, 1)?.dims(),
        [2, 4, 1, 1]
    );
    // Groups: the kernel's channels are the input's per group.
    let x4 = Tensor::zeros((2, 4, 5, 5), DType::F32, dev)?;
    let kg = Tensor::zeros((4, 2, 7, 7), DType::F32, dev)?;
    assert!(msg(node_kernels::conv2d(&x4, &kg, 0, 1, 1, 2)).contains("does not fit"));
    assert!(msg(node_kernels::conv2d(&x4, &kg, 1, 1, 1, 3)).contains("groups"));
    assert!(msg(node_kernels::conv2d(&x4, &kg, 1, 1, 1, 0)).contains("groups"));
    assert_eq!(
        node_kernels::conv2d(&x4, &kg, 1, 1, 1, 2)?.dims(),
        [2, 4, 1, 1]
    );
    Ok(())
}

/// The gradients are the same bits every time (on the CPU the weight gradient sums its blocks
/// in a fixed order; on CUDA the input gradient gathers each pixel's taps in a fixed order,
/// without atomics), so that a resumed training run repeats a straight one exactly.
fn conv2d_gradients_are_deterministic(dev: &Device) -> Result<()> {
    let draws = Draws::new(301);
    // 128 images: 22 blocks, several per thread.
    let c = &Case {
        x: (128, 65, 6, 6),
        ..*CASES.last().unwrap()
    };
    let x = Var::from_tensor(&draws.randn(0f32, 1.0, c.x, dev)?)?;
    let k = Var::from_tensor(&draws.randn(0f32, 1.0, c.k, dev)?)?;
    let y = node_kernels::conv2d(&x, &k, c.padding, c.stride, c.dilation, 1)?;
    let r = Draws::new(95).randn_like(&y)?;
    let grads = || -> Result<(Vec<f32>, Vec<f32>)> {
        let y = node_kernels::conv2d(&x, &k, c.padding, c.stride, c.dilation, 1)?;
        let g = (y * &r)?.sum_all()?.backward()?;
        Ok((
            g.get(&x).unwrap().flatten_all()?.to_vec1()?,
            g.get(&k).unwrap().flatten_all()?.to_vec1()?,
        ))
    };
    let first = grads()?;
    for _ in 0..20 {
        assert!(
            grads()? == first,
            "gradients differ between identical calls"
        );
    }
    Ok(())
}

candle_core::test_device!(
    conv2d_gradients_are_deterministic,
    conv2d_deterministic_cpu,
    conv2d_deterministic_cuda,
    conv2d_deterministic_metal
);
