//! Second-order ODEs: a damped oscillator against its closed form, batched and unbatched;
//! gradients of the adjoint against backprop and central differences; the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs;
use node_adjoint::{odeint_adjoint, with_params, AdjointOptions, ParamVectorField};
use node_models::SecondOrder;
use node_solvers::{odeint, SolveOptions};

/// `x'' = −k x − c x'` with `θ = [k, c]`, on states `[..., 2D]` along `dim`.
fn oscillator(
    theta: &Var,
    dim: usize,
) -> SecondOrder<impl ParamVectorField + Clone + Send + Sync + 'static> {
    let th = theta.as_tensor().clone();
    let accel = with_params(
        move |_t: f64, z: &Tensor| {
            let n = z.dim(dim)? / 2;
            let (x, v) = (z.narrow(dim, 0, n)?, z.narrow(dim, n, n)?);
            let k = th.narrow(0, 0, 1)?.squeeze(0)?;
            let c = th.narrow(0, 1, 1)?.squeeze(0)?;
            (x.broadcast_mul(&k)? + v.broadcast_mul(&c)?)?.neg()
        },
        vec![theta.clone()],
    );
    SecondOrder::new(accel, dim)
}

/// The underdamped oscillator's position and velocity at `t` from `x0`, `v0`.
fn exact(k: f64, c: f64, x0: f64, v0: f64, t: f64) -> (f64, f64) {
    let (z, w) = (c / 2.0, (k - c * c / 4.0).sqrt());
    let (a, b) = (x0, (v0 + z * x0) / w);
    let e = (-z * t).exp();
    let x = e * (a * (w * t).cos() + b * (w * t).sin());
    let v = e * ((-z * a + w * b) * (w * t).cos() + (-z * b - w * a) * (w * t).sin());
    (x, v)
}

fn closed_form_case(dev: &Device) -> Result<()> {
    let (k, c) = (4.0, 0.3);
    let theta = Var::new(&[k, c], dev)?;
    let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
    let ts = [0.0, 0.5, 1.7, 3.0];
    // A batch of three oscillators, [3, 2] (x and v of one dimension each), and one of two
    // dimensions unbatched, [4].
    let field = oscillator(&theta, 1);
    let (x0, v0) = ([1.0, -0.5, 0.2], [0.0, 1.0, -2.0]);
    let z0 = field.state(
        &Tensor::new(&[[x0[0]], [x0[1]], [x0[2]]], dev)?,
        &Tensor::new(&[[v0[0]], [v0[1]], [v0[2]]], dev)?,
    )?;
    let ys = odeint(&field, &z0, &ts, &opts)?.ys;
    for (i, &t) in ts.iter().enumerate() {
        let (x, v) = field.halves(&ys.get(i)?)?;
        let (x, v) = (
            x.flatten_all()?.to_vec1::<f64>()?,
            v.flatten_all()?.to_vec1::<f64>()?,
        );
        for b in 0..3 {
            let (xe, ve) = exact(k, c, x0[b], v0[b], t);
            assert!((x[b] - xe).abs() < 1e-8, "x at {t}: {} vs {xe}", x[b]);
            assert!((v[b] - ve).abs() < 1e-8, "v at {t}: {} vs {ve}", v[b]);
        }
    }
    let flat = oscillator(&theta, 0);
    let z0 = flat.state(
        &Tensor::new(&[1.0, 0.2], dev)?,
        &Tensor::new(&[0.0, -2.0], dev)?,
    )?;
    let ys = odeint(&flat, &z0, &ts, &opts)?.ys;
    let (x, v) = flat.halves(&ys.get(3)?)?;
    let (x, v) = (x.to_vec1::<f64>()?, v.to_vec1::<f64>()?);
    for (j, (x0, v0)) in [(1.0, 0.0), (0.2, -2.0)].into_iter().enumerate() {
        let (xe, ve) = exact(k, c, x0, v0, 3.0);
        assert!((x[j] - xe).abs() < 1e-8 && (v[j] - ve).abs() < 1e-8);
    }
    Ok(())
}

/// `L = Σ x(T)² + v(T)²` differentiated by the adjoint, by backprop and by central
/// differences, to `θ = [k, c]` and to the initial state.
fn gradients_case(dev: &Device) -> Result<()> {
    let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
    let ts = [0.0, 2.0];
    let loss_of =
        |theta: &[f64], z0: &Tensor, adjoint: bool| -> Result<(f64, Vec<f64>, Vec<f64>)> {
            let th = Var::new(theta, dev)?;
            let z = Var::from_tensor(z0)?;
            let field = oscillator(&th, 1);
            let ys = if adjoint {
                odeint_adjoint(
                    &field,
                    z.as_tensor(),
                    &ts,
                    &opts,
                    &AdjointOptions::default().tolerances(1e-10, 1e-12),
                )?
                .ys
            } else {
                odeint(&field, z.as_tensor(), &ts, &opts)?.ys
            };
            let loss = ys.get(1)?.sqr()?.sum_all()?;
            let grads = loss.backward()?;
            Ok((
                loss.to_scalar::<f64>()?,
                grads.get(&th).expect("dL/dθ").to_vec1::<f64>()?,
                grads
                    .get(&z)
                    .expect("dL/dz0")
                    .flatten_all()?
                    .to_vec1::<f64>()?,
            ))
        };
    let theta = [3.0, 0.4];
    let z0 = Tensor::new(&[[1.0f64, 0.5], [-0.3, 0.8]], dev)?;
    let (_, g_adj, gz_adj) = loss_of(&theta, &z0, true)?;
    let (_, g_bp, gz_bp) = loss_of(&theta, &z0, false)?;
    let h = 1e-6;
    for i in 0..2 {
        let (mut up, mut down) = (theta, theta);
        up[i] += h;
        down[i] -= h;
        let fd = (loss_of(&up, &z0, false)?.0 - loss_of(&down, &z0, false)?.0) / (2.0 * h);
        for (what, g) in [("adjoint", g_adj[i]), ("backprop", g_bp[i])] {
            assert!(
                (g - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                "dL/dθ{i} {what}: {g} vs {fd}"
            );
        }
    }
    assert!(max_abs(&(Tensor::new(gz_adj, dev)? - Tensor::new(gz_bp, dev)?)?)? < 1e-7);
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let theta = Var::new(&[1.0f64, 0.0], dev)?;
    let field = oscillator(&theta, 1);
    let odd = Tensor::zeros((2, 3), DType::F64, dev)?;
    let err = odeint(&field, &odd, &[0.0, 1.0], &SolveOptions::default()).expect_err("odd");
    assert!(err.to_string().contains("size must be even"), "{err}");
    let err = field
        .state(
            &Tensor::zeros((2, 1), DType::F64, dev)?,
            &Tensor::zeros((2, 2), DType::F64, dev)?,
        )
        .expect_err("shapes differ");
    assert!(err.to_string().contains("the same shape"), "{err}");
    let err = field
        .halves(&Tensor::zeros(4, DType::F64, dev)?)
        .expect_err("no dimension 1");
    assert!(err.to_string().contains("no dimension 1"), "{err}");
    // An acceleration of the whole state's shape instead of the position's.
    let wrong = SecondOrder::new(|_t: f64, z: &Tensor| Ok(z.clone()), 1);
    let z = Tensor::zeros((2, 2), DType::F64, dev)?;
    let err = odeint(&wrong, &z, &[0.0, 1.0], &SolveOptions::default()).expect_err("shape");
    assert!(err.to_string().contains("the position's shape"), "{err}");
    Ok(())
}

candle_core::test_device!(
    closed_form_case,
    closed_form_cpu,
    closed_form_cuda,
    closed_form_metal
);
candle_core::test_device!(
    gradients_case,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);
