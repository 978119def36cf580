//! `linear` matches `candle_nn::Linear`, values and gradients (input, weight, bias), on the
//! small-state shapes it computes directly, the large ones it hands to `gemm`, batched and
//! non-contiguous inputs, with and without a bias, f32 and f64.

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

fn check(x: &Tensor, n: usize, with_bias: bool, tol: f64) -> Result<()> {
    let draws = Draws::new(503);
    let (dev, dtype) = (x.device(), x.dtype());
    let k = *x.dims().last().unwrap();
    let w = Var::from_tensor(&draws.randn(0f32, 0.5, (n, k), dev)?.to_dtype(dtype)?)?;
    let b = Var::from_tensor(&draws.randn(0f32, 0.5, n, dev)?.to_dtype(dtype)?)?;
    let vx = Var::from_tensor(x)?;
    let bias = with_bias.then_some(b.as_tensor());
    let ours = node_kernels::linear(vx.as_tensor(), &w, bias)?;
    let want =
        candle_nn::Linear::new(w.as_tensor().clone(), bias.cloned()).forward(vx.as_tensor())?;
    let what = format!("x {:?} → {n}, bias {with_bias}, {dtype:?}", x.dims());
    assert!(max_rel_diff(&ours, &want)? < tol, "{what}: values");
    let r = Draws::new(81).randn_like(&ours)?;
    let g = (ours * &r)?.sum_all()?.backward()?;
    let g_ref = (want * &r)?.sum_all()?.backward()?;
    let mut vars = vec![("dx", &vx), ("dweight", &w)];
    if with_bias {
        vars.push(("dbias", &b));
    } else {
        assert!(g.get(&b).is_none());
    }
    for (name, v) in vars {
        let err = max_rel_diff(g.get(v).unwrap(), g_ref.get(v).unwrap())?;
        assert!(err < tol, "{what}: {name} off by {err:e}");
    }
    Ok(())
}

fn linear_matches_candle(dev: &Device) -> Result<()> {
    let draws = Draws::new(502);
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let randn = |shape: &[usize]| -> Result<Tensor> {
            Ok(draws.randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?)
        };
        for with_bias in [true, false] {
            // ode_demo's two layers (wide and narrow outputs), odd sizes, one output, one
            // input, batch 1, a product large enough for gemm, a batched (3-D) input.
            check(&randn(&[1024, 2])?, 50, with_bias, tol)?;
            check(&randn(&[1024, 50])?, 2, with_bias, tol)?;
            check(&randn(&[7, 13])?, 9, with_bias, tol)?;
            check(&randn(&[5, 3])?, 1, with_bias, tol)?;
            check(&randn(&[6, 1])?, 11, with_bias, tol)?;
            check(&randn(&[1, 64])?, 10, with_bias, tol)?;
            check(&randn(&[128, 784])?, 300, with_bias, tol)?;
            check(&randn(&[2, 3, 5])?, 4, with_bias, tol)?;
        }
        // Non-contiguous input: a transpose and a narrowed view.
        let x = randn(&[9, 13])?.t()?;
        assert!(!x.is_contiguous());
        check(&x, 12, true, tol)?;
        check(&randn(&[20, 9])?.narrow(1, 2, 5)?, 3, true, tol)?;
    }
    Ok(())
}

candle_core::test_device!(linear_matches_candle, linear_cpu, linear_cuda, linear_metal);

/// A frozen weight or a plain input gets no gradient; the others are unchanged.
#[test]
fn linear_grads_only_for_tracked_inputs() -> Result<()> {
    let draws = Draws::new(501);
    let dev = &Device::Cpu;
    let x = draws.randn(0f32, 1.0, (16, 3), dev)?;
    let w = draws.randn(0f32, 1.0, (5, 3), dev)?;
    let b = Var::from_tensor(&draws.randn(0f32, 1.0, 5, dev)?)?;
    let g = node_kernels::linear(&x, &w, Some(&b))?
        .sum_all()?
        .backward()?;
    assert!(g.get(&x).is_none() && g.get(&w).is_none());
    let db = g.get(&b).unwrap().to_vec1::<f32>()?;
    assert!(db.iter().all(|v| *v == 16.0), "{db:?}");
    Ok(())
}

#[test]
fn linear_rejects_bad_shapes() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((4, 3), DType::F32, dev)?;
    let err = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        node_kernels::linear(x, w, b).unwrap_err().to_string()
    };
    let w = Tensor::zeros((2, 3), DType::F32, dev)?;
    assert!(err(&x, &Tensor::zeros((2, 4), DType::F32, dev)?, None).contains("inputs"));
    assert!(err(&x, &Tensor::zeros(3, DType::F32, dev)?, None).contains("[out, in]"));
    assert!(err(&x, &w, Some(&Tensor::zeros(3, DType::F32, dev)?)).contains("bias"));
    assert!(err(&x, &w.to_dtype(DType::F64)?, None).contains("F64"));
    Ok(())
}

/// Empty sizes: no rows give `[0, n]`; no inputs give the bias alone (as `torch.nn.Linear`),
/// and its gradient (the empty input failed to reshape); no outputs give `[m, 0]`.
#[test]
fn linear_handles_empty_sizes() -> Result<()> {
    let dev = &Device::Cpu;
    for dtype in [DType::F32, DType::F64, DType::F16] {
        let zeros = |s: &[usize]| Tensor::zeros(s, dtype, dev);
        let bias = candle_core::Var::from_tensor(
            &Tensor::new(&[1.0f64, 2.0, 3.0], dev)?.to_dtype(dtype)?,
        )?;
        let y = node_kernels::linear(&zeros(&[0, 4])?, &zeros(&[3, 4])?, Some(bias.as_tensor()))?;
        assert_eq!(y.dims(), &[0, 3]);
        let x = zeros(&[2, 5, 0])?;
        let y = node_kernels::linear(&x, &zeros(&[3, 0])?, Some(bias.as_tensor()))?;
        assert_eq!(y.dims(), &[2, 5, 3]);
        let got = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(got, [1.0, 2.0, 3.0].repeat(10), "{dtype:?}");
        let g = y.sum_all()?.backward()?;
        let gb = g.get(bias.as_tensor()).expect("the bias's gradient");
        assert_eq!(gb.to_dtype(DType::F64)?.to_vec1::<f64>()?, vec![10.0; 3]);
        let y = node_kernels::linear(&zeros(&[2, 4])?, &zeros(&[0, 4])?, None)?;
        assert_eq!(y.dims(), &[2, 0]);
    }
    Ok(())
}
