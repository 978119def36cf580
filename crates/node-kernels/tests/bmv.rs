//! `batched_matvec` matches Candle's broadcast product and sum, values and gradients, on a
//! neural CDE's shapes, odd and degenerate ones, non-contiguous inputs, f32 and f64.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::Draws;

/// `max |a − b| / max |b|` (0 for two empty tensors).
fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    if b.elem_count() == 0 {
        return Ok(0.0);
    }
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?;
    let m = b.abs()?.flatten_all()?.max(0)?;
    Ok((d / m)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn check(m: &Tensor, v: &Tensor, tol: f64) -> Result<()> {
    let (vm, vv) = (Var::from_tensor(m)?, Var::from_tensor(v)?);
    let ours = node_kernels::batched_matvec(vm.as_tensor(), vv.as_tensor())?;
    let want = vm.broadcast_mul(&vv.unsqueeze(1)?)?.sum(2)?;
    let what = format!("{:?} · {:?}, {:?}", m.dims(), v.dims(), m.dtype());
    assert!(max_rel_diff(&ours, &want)? < tol, "{what}: values");
    let r = Draws::new(71).randn_like(&ours)?;
    let g = (ours * &r)?.sum_all()?.backward()?;
    let g_ref = (want * &r)?.sum_all()?.backward()?;
    for (name, var) in [("dm", &vm), ("dv", &vv)] {
        let err = max_rel_diff(g.get(var).unwrap(), g_ref.get(var).unwrap())?;
        assert!(err < tol, "{what}: {name} off by {err:e}");
    }
    Ok(())
}

fn matches_candle(dev: &Device) -> Result<()> {
    let draws = Draws::new(202);
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let randn = |shape: &[usize]| -> Result<Tensor> {
            Ok(draws.randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?)
        };
        // The SDE-GAN's discriminator, the spirals' CDE, odd sizes, one of each.
        for (b, h, c) in [(1024, 16, 2), (32, 8, 3), (7, 5, 13), (1, 1, 1), (3, 1, 4)] {
            check(&randn(&[b, h, c])?, &randn(&[b, c])?, tol)?;
        }
        // Non-contiguous inputs: transposed views.
        let m = randn(&[6, 3, 4])?.transpose(1, 2)?;
        let v = randn(&[3, 6])?.t()?;
        assert!(!m.is_contiguous() && !v.is_contiguous());
        check(&m, &v, tol)?;
    }
    Ok(())
}

candle_core::test_device!(matches_candle, bmv_cpu, bmv_cuda, bmv_metal);

#[test]
fn gradients_only_for_tracked_inputs_and_empty_shapes() -> Result<()> {
    let draws = Draws::new(201);
    let dev = &Device::Cpu;
    let m = draws.randn(0f32, 1.0, (4, 3, 2), dev)?;
    let v = Var::from_tensor(&Tensor::ones((4, 2), DType::F32, dev)?)?;
    let g = node_kernels::batched_matvec(&m, &v)?
        .sum_all()?
        .backward()?;
    assert!(g.get(&m).is_none());
    // dv[b, c] = Σ_h m[b, h, c].
    let want = m.sum(1)?.to_vec2::<f32>()?;
    let got = g.get(&v).unwrap().to_vec2::<f32>()?;
    for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((a - b).abs() < 1e-6);
    }
    let none = Tensor::zeros((3, 2, 0), DType::F32, dev)?;
    let out = node_kernels::batched_matvec(&none, &Tensor::zeros((3, 0), DType::F32, dev)?)?;
    assert_eq!(out.dims(), [3, 2]);
    assert!(out.to_vec2::<f32>()?.iter().flatten().all(|x| *x == 0.0));
    Ok(())
}

#[test]
fn rejects_bad_shapes() -> Result<()> {
    let dev = &Device::Cpu;
    let m = Tensor::zeros((4, 3, 2), DType::F32, dev)?;
    let err = |m: &Tensor, v: &Tensor| node_kernels::batched_matvec(m, v).unwrap_err().to_string();
    assert!(err(&m, &Tensor::zeros((4, 3), DType::F32, dev)?).contains("expected [4, 2]"));
    assert!(err(
        &m.flatten_from(1)?,
        &Tensor::zeros((4, 2), DType::F32, dev)?
    )
    .contains("[batch"));
    assert!(err(&m, &Tensor::zeros((4, 2), DType::F64, dev)?).contains("dtypes"));
    Ok(())
}
