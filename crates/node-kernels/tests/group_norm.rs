//! `group_norm` matches `candle_nn::GroupNorm`, values and gradients (input, weight, bias), on
//! odd shapes, batch 1, non-contiguous inputs, f32 and f64; `group_norm_relu` matches the
//! norm followed by the ReLU.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, Var};
use common::Draws;

/// `max |a − b| / max |b|`.
fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?;
    let m = b.abs()?.flatten_all()?.max(0)?;
    Ok((d / m)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn check(x: &Tensor, groups: usize, tol: f64) -> Result<()> {
    let draws = Draws::new(402);
    let c = x.dim(1)?;
    let dev = x.device();
    let w = Var::from_tensor(&(draws.randn(1f32, 0.5, c, dev)?.to_dtype(x.dtype())?))?;
    let b = Var::from_tensor(&(draws.randn(0f32, 0.5, c, dev)?.to_dtype(x.dtype())?))?;
    let vx = Var::from_tensor(x)?;
    let reference = candle_nn::GroupNorm::new(
        w.as_tensor().clone(),
        b.as_tensor().clone(),
        c,
        groups,
        1e-5,
    )?;
    let ours = node_kernels::group_norm(vx.as_tensor(), groups, &w, &b, 1e-5)?;
    let want = reference.forward(vx.as_tensor())?;
    let what = format!("x {:?} groups {groups} {:?}", x.dims(), x.dtype());
    assert!(max_rel_diff(&ours, &want)? < tol, "{what}: values");
    check_grads(&ours, &want, [&vx, &w, &b], tol, &what)?;
    // The fused ReLU against our norm then our ReLU (the same arithmetic, so the same mask;
    // the norm itself is checked against Candle's above): values exactly, gradients to
    // round-off.
    let fused = node_kernels::group_norm_relu(vx.as_tensor(), groups, &w, &b, 1e-5)?;
    let unfused = node_kernels::relu(&node_kernels::group_norm(
        vx.as_tensor(),
        groups,
        &w,
        &b,
        1e-5,
    )?)?;
    assert_eq!(
        max_rel_diff(&fused, &unfused)?,
        0.0,
        "{what}: fused relu values"
    );
    check_grads(
        &fused,
        &unfused,
        [&vx, &w, &b],
        tol,
        &format!("{what} fused relu"),
    )
}

fn check_grads(ours: &Tensor, want: &Tensor, vars: [&Var; 3], tol: f64, what: &str) -> Result<()> {
    let [vx, w, b] = vars;
    let r = Draws::new(96).randn_like(ours)?;
    let g = (ours * &r)?.sum_all()?.backward()?;
    let g_ref = (want * &r)?.sum_all()?.backward()?;
    for (name, v) in [("dx", &vx), ("dweight", &w), ("dbias", &b)] {
        let err = max_rel_diff(g.get(v).unwrap(), g_ref.get(v).unwrap())?;
        assert!(err < tol, "{what}: {name} off by {err:e}");
    }
    Ok(())
}

fn group_norm_matches_candle(dev: &Device) -> Result<()> {
    let draws = Draws::new(401);
    for dtype in [DType::F32, DType::F64] {
        // Candle's reference accumulates in the input dtype; ours in f64.
        let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
        let randn = |shape: &[usize], mean: f32| -> Result<Tensor> {
            Ok(draws.randn(mean, 2.0, shape, dev)?.to_dtype(dtype)?)
        };
        // The ODE-Net block's norm (batch 5), batch 1, odd sizes, one group, one channel per
        // group, rank 3 and rank 5, an offset mean (centring must not cancel).
        check(&randn(&[5, 64, 6, 6], 0.0)?, 32, tol)?;
        check(&randn(&[1, 6, 7, 3], 0.0)?, 3, tol)?;
        check(&randn(&[3, 5, 11], 3.0)?, 1, tol)?;
        check(&randn(&[2, 4, 3], 0.0)?, 4, tol)?;
        check(&randn(&[2, 6, 2, 3, 2], 0.0)?, 2, tol)?;
        // Large enough to take the threaded path; on CUDA, slices long enough for the
        // kernels' larger blocks (1352 and 6400 elements).
        check(&randn(&[16, 64, 8, 8], 0.0)?, 32, tol)?;
        check(&randn(&[2, 64, 26, 26], 0.0)?, 32, tol)?;
        check(&randn(&[2, 8, 40, 40], 1.0)?, 2, tol)?;
        // Non-contiguous: transposed spatial axes, a narrowed batch.
        let x = randn(&[3, 8, 5, 4], 0.0)?.transpose(2, 3)?;
        assert!(!x.is_contiguous());
        check(&x, 4, tol)?;
        check(&randn(&[6, 8, 5, 4], 0.0)?.narrow(0, 2, 3)?, 2, tol)?;
    }
    Ok(())
}

candle_core::test_device!(
    group_norm_matches_candle,
    group_norm_cpu,
    group_norm_cuda,
    group_norm_metal
);

#[test]
fn group_norm_rejects_bad_input() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((2, 6, 3), DType::F32, dev)?;
    let w = Tensor::ones(6, DType::F32, dev)?;
    let b = Tensor::zeros(6, DType::F32, dev)?;
    let err = |x: &Tensor, g, w: &Tensor, b: &Tensor| {
        node_kernels::group_norm(x, g, w, b, 1e-5)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&x, 4, &w, &b).contains("groups"));
    assert!(err(&x, 0, &w, &b).contains("groups"));
    assert!(err(&Tensor::zeros(6, DType::F32, dev)?, 2, &w, &b).contains("[B, C"));
    assert!(err(&x, 2, &Tensor::ones(5, DType::F32, dev)?, &b).contains("weight"));
    assert!(err(&x, 2, &w, &b.to_dtype(DType::F64)?).contains("bias"));
    // A constant input normalizes to the bias (variance 0, eps keeps it finite).
    let y = node_kernels::group_norm(&(x + 3.0)?, 2, &w, &(b + 0.5)?, 1e-5)?;
    assert!(y.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| *v == 0.5));
    Ok(())
}
