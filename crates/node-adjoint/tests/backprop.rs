//! Candle's backward pass as the workspace builds it (`third_party/candle-core`, patched so that
//! a tensor's first gradient contribution is stored as it is instead of added to zeros):
//! gradients against analytic ones where contributions come first by addition and by
//! subtraction, one tensor feeds several ops, two inputs share one upstream gradient, and a
//! contribution is a strided view (transpose, broadcast); every gradient contiguous, of its
//! tensor's shape. And graphs far deeper than a thread's stack (the patch's explicit-stack
//! sort and drop) are differentiated and dropped.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};

#[path = "common/time_mlp.rs"]
mod time_mlp;
use time_mlp::seeded_normal;

fn close(got: &Tensor, want: &Tensor, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert!(got.is_contiguous(), "{what}: not contiguous");
    let d = (got - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    assert!(d < 1e-12, "{what}: off by {d:e}");
    Ok(())
}

fn accumulation(dev: &Device) -> Result<()> {
    let mut seed = 510;
    let mut randn = |d: &[usize]| -> Result<Var> {
        seed += 1;
        Ok(Var::from_tensor(&seeded_normal(d, seed, DType::F64, dev)?)?)
    };
    let (x, y, q, w, z, u) = (
        randn(&[3, 4])?,
        randn(&[3, 4])?,
        randn(&[3, 4])?,
        randn(&[4])?,
        randn(&[4, 3])?,
        randn(&[4, 3])?,
    );
    let (xt, yt, qt, wt, zt) = (
        x.as_tensor(),
        y.as_tensor(),
        q.as_tensor(),
        w.as_tensor(),
        z.as_tensor(),
    );
    let r = seeded_normal((3, 4), 502, DType::F64, dev)?;
    let c = seeded_normal((3, 4), 503, DType::F64, dev)?;
    // L = Σ (x + x)·y       x: 2y, twice through one add; y: 2x
    //   + Σ (x − y)         x: +1; y: −1 (a subtraction, y's later contribution)
    //   + Σ (c − q)·r       q: −r, its only contribution a subtraction
    //   + Σ x ⊙ w (rows)    x: w broadcast; w: Σ over rows of x
    //   + Σ xᵀ · z (⊙)      x: zᵀ, a transposed contribution
    //   + Σ uᵀ · c (⊙)      u: cᵀ, its only contribution a transposed view
    let terms = [
        ((xt + xt)? * yt)?.sum_all()?,
        (xt - yt)?.sum_all()?,
        ((&c - qt)? * &r)?.sum_all()?,
        xt.broadcast_mul(wt)?.sum_all()?,
        (xt.t()? * zt)?.sum_all()?,
        (u.as_tensor().t()? * &c)?.sum_all()?,
    ];
    let loss = terms
        .iter()
        .skip(1)
        .try_fold(terms[0].clone(), |a, t| a + t)?;
    let g = loss.backward()?;
    let ones = Tensor::ones((3, 4), DType::F64, dev)?;
    let dx = (((y.as_tensor() * 2.0)? + &ones)?.broadcast_add(&w)? + z.t()?)?;
    close(g.get(&x).unwrap(), &dx, "dx")?;
    close(g.get(&y).unwrap(), &((x.as_tensor() * 2.0)? - &ones)?, "dy")?;
    close(g.get(&q).unwrap(), &r.neg()?, "dq")?;
    close(g.get(&w).unwrap(), &x.sum(0)?, "dw")?;
    close(g.get(&z).unwrap(), &x.t()?.contiguous()?, "dz")?;
    close(g.get(&u).unwrap(), &c.t()?.contiguous()?, "du")?;
    // Two inputs of one add share its upstream gradient; each keeps its own value after the
    // other's accumulates more.
    let (a, b) = (randn(&[5])?, randn(&[5])?);
    let s = (a.as_tensor() + b.as_tensor())?;
    let loss = ((&s * 3.0)?.sum_all()? + a.as_tensor().sqr()?.sum_all()?)?;
    let g = loss.backward()?;
    let three = Tensor::full(3f64, 5, dev)?;
    close(g.get(&b).unwrap(), &three, "db")?;
    close(
        g.get(&a).unwrap(),
        &(&three + (a.as_tensor() * 2.0)?)?,
        "da",
    )?;
    Ok(())
}

candle_core::test_device!(
    accumulation,
    accumulation_cpu,
    accumulation_cuda,
    accumulation_metal
);

/// A shape mismatch in a backward rule is still an error, as when the first contribution was
/// added to zeros of the tensor's shape.
#[test]
fn mismatched_contribution_is_an_error() -> Result<()> {
    // The only way to produce one is a custom op whose backward returns a wrong shape.
    struct Bad;
    impl candle_core::CustomOp1 for Bad {
        fn name(&self) -> &'static str {
            "bad-backward"
        }
        fn cpu_fwd(
            &self,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            Ok((s.clone(), l.shape().clone()))
        }
        fn bwd(
            &self,
            _arg: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> candle_core::Result<Option<Tensor>> {
            Ok(Some(grad.flatten_all()?.narrow(0, 0, 1)?))
        }
    }
    let x = Var::new(&[1f64, 2.0, 3.0], &Device::Cpu)?;
    let y = x.apply_op1(Bad)?;
    let err = y.sum_all()?.backward().unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
    Ok(())
}

/// A chain of 300 000 ops (deeper than backprop through a long solve builds; the unpatched
/// sort and drop recursed once per op and overflowed a test thread's 2 MiB stack) sorts,
/// differentiates and drops on the test thread: `y ← c·y`, and every 1000 ops
/// `y ← (y + y)/2`, where the search meets a node it has seen. `dy/dx = cᴺ`.
fn deep_graphs(dev: &Device) -> Result<()> {
    let x = Var::from_tensor(&Tensor::new(&[1.0f64, 2.0], dev)?)?;
    let c = 1.0 + 1e-6;
    let n = 300_000;
    let mut y = x.as_tensor().clone();
    for i in 0..n {
        y = y.affine(c, 0.0)?;
        if i % 1000 == 999 {
            y = (&y + &y)?.affine(0.5, 0.0)?;
        }
    }
    let g = y.sum_all()?.backward()?;
    let got = g.get(&x).expect("a gradient").to_vec1::<f64>()?;
    let want = c.powi(n);
    for v in got {
        assert!((v - want).abs() < 1e-9 * want, "{v} vs {want}");
    }
    drop(g);
    drop(y);
    Ok(())
}

candle_core::test_device!(deep_graphs, deep_cpu, deep_cuda, deep_metal);
