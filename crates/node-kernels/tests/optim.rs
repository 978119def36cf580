//! SGD's in-place updates against the same arithmetic in Candle ops: equal values (the fused
//! kernels round as the ops do), with and without weight decay, through the fused kernels and
//! through the fallback (a strided operand, f16), and the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::Draws;

fn randn(draws: &Draws, shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(draws.randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?)
}

fn same(got: &Tensor, want: &Tensor, what: &str) -> Result<()> {
    let (got, want) = (
        got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
        want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
    );
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: element {i} is {}, not {}", got[i], want[i]);
    }
    Ok(())
}

fn updates_match_candle_ops(dev: &Device) -> Result<()> {
    let draws = Draws::new(600);
    let (mu, lr) = (0.9, 0.1);
    for dtype in [DType::F32, DType::F64, DType::F16] {
        for wd in [0.0, 5e-4] {
            let shape = [7, 33];
            let (p0, g, b0) = (
                randn(&draws, &shape, dtype, dev)?,
                randn(&draws, &shape, dtype, dev)?,
                randn(&draws, &shape, dtype, dev)?,
            );
            // The op-by-op arithmetic (what `SgdMomentum` computed before the fused kernels).
            let decayed = |g: &Tensor, p: &Tensor| -> Result<Tensor> {
                Ok(if wd != 0.0 {
                    (g + p.affine(wd, 0.0)?)?
                } else {
                    g.clone()
                })
            };
            let b_want = (b0.affine(mu, 0.0)? + decayed(&g, &p0)?)?;
            let p_want = (&p0 - b_want.affine(lr, 0.0)?)?;
            let p_plain = (&p0 - decayed(&g, &p0)?.affine(lr, 0.0)?)?;
            let what = format!("{dtype:?} weight decay {wd}");
            // A contiguous gradient (the fused kernels for f32 and f64), and one stored
            // transposed (the fallback).
            let g_strided = g.t()?.contiguous()?.t()?;
            for (g, how) in [(&g, "contiguous"), (&g_strided, "strided")] {
                let (p, b) = (p0.copy()?, b0.copy()?);
                node_kernels::sgd_momentum_update(&b, g, &p, mu, wd)?;
                same(&b, &b_want, &format!("{what}, {how}: buffer"))?;
                node_kernels::sgd_descend(&p, &b, lr, 0.0)?;
                same(&p, &p_want, &format!("{what}, {how}: parameter"))?;
                let p = p0.copy()?;
                node_kernels::sgd_descend(&p, g, lr, wd)?;
                same(&p, &p_plain, &format!("{what}, {how}: without momentum"))?;
            }
        }
    }
    // A zero buffer gives PyTorch's first step, `b = ∇`.
    let (p, g) = (
        randn(&draws, &[5], DType::F32, dev)?,
        randn(&draws, &[5], DType::F32, dev)?,
    );
    let b = p.zeros_like()?;
    node_kernels::sgd_momentum_update(&b, &g, &p, mu, 0.0)?;
    same(&b, &g, "first step")?;
    Ok(())
}

candle_core::test_device!(updates_match_candle_ops, optim_cpu, optim_cuda, optim_metal);

#[test]
fn bad_operands_are_errors() -> Result<()> {
    let dev = &Device::Cpu;
    let p = Tensor::zeros((3, 4), DType::F32, dev)?;
    let err = |r: candle_core::Result<()>| r.unwrap_err().to_string();
    let e = err(node_kernels::sgd_descend(
        &p,
        &Tensor::zeros((4, 3), DType::F32, dev)?,
        0.1,
        0.0,
    ));
    assert!(e.contains("[4, 3]"), "{e}");
    let e = err(node_kernels::sgd_descend(
        &p,
        &Tensor::zeros((3, 4), DType::F64, dev)?,
        0.1,
        0.0,
    ));
    assert!(e.contains("F64"), "{e}");
    let e = err(node_kernels::sgd_descend(
        &Tensor::zeros((4, 3), DType::F32, dev)?.t()?,
        &p,
        0.1,
        0.0,
    ));
    assert!(e.contains("contiguous"), "{e}");
    // An operand that is the tensor being updated.
    let e = err(node_kernels::sgd_momentum_update(&p, &p, &p, 0.9, 0.0));
    assert!(e.contains("storage"), "{e}");
    Ok(())
}
