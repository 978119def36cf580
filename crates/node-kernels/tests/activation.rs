//! The kernels match Candle's reference ops, values and gradients, on odd shapes, batch 1,
//! non-contiguous inputs, f32 and f64.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};

fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let m = b
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(d / m.max(1e-30))
}

fn tanh_matches_candle(dev: &Device) -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-15 };
        for shape in [
            vec![1],
            vec![7],
            vec![1, 50],
            vec![3, 5, 17],
            vec![1024, 50],
        ] {
            let x = (Tensor::randn(0f32, 2.0, shape.as_slice(), dev)?).to_dtype(dtype)?;
            assert!(
                max_rel_diff(&node_kernels::tanh(&x)?, &x.tanh()?)? < tol,
                "{dtype:?} {shape:?}"
            );
            // Gradients through Candle's autograd: d/dx Σ w·tanh(x) = w (1 − tanh²x).
            let v = Var::from_tensor(&x)?;
            let w = Tensor::randn(0f32, 1.0, shape.as_slice(), dev)?.to_dtype(dtype)?;
            let g = (node_kernels::tanh(v.as_tensor())? * &w)?
                .sum_all()?
                .backward()?;
            let g_ref = (v.as_tensor().tanh()? * &w)?.sum_all()?.backward()?;
            // |Δg| = |w|·|Δ(1 − y²)| ≤ |w|·2|Δy|, and |Δy| ≤ 4e-7 in f32 (round-off in f64):
            // bound the gradient error by the scale of w, not of g (which can be ~0 when
            // every x saturates).
            let dg = (g.get(&v).unwrap() - g_ref.get(&v).unwrap())?
                .abs()?
                .flatten_all()?
                .max(0)?;
            let wmax = w.abs()?.flatten_all()?.max(0)?;
            let ratio = (dg / wmax)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(
                ratio <= 2.0 * tol,
                "{dtype:?} {shape:?}: gradient error {ratio:e} of max|w|"
            );
        }
        // Non-contiguous input: a transpose and a narrowed view.
        let x = Tensor::randn(0f32, 2.0, (9, 13), dev)?.to_dtype(dtype)?;
        let xt = x.t()?;
        assert!(!xt.is_contiguous());
        assert!(max_rel_diff(&node_kernels::tanh(&xt)?, &xt.tanh()?)? < tol);
        let xn = x.narrow(1, 3, 5)?;
        assert!(max_rel_diff(&node_kernels::tanh(&xn)?, &xn.tanh()?)? < tol);
    }
    // Other dtypes fall back to Candle's op.
    let h = Tensor::new(&[0.5f32, -1.0], dev)?.to_dtype(DType::BF16)?;
    assert_eq!(node_kernels::tanh(&h)?.dtype(), DType::BF16);
    Ok(())
}

candle_core::test_device!(tanh_matches_candle, tanh_cpu, tanh_cuda, tanh_metal);
