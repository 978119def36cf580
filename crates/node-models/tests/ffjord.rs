//! FFJORD: its Jacobian–vector products against autograd's Jacobian, the exact trace and
//! Hutchinson's estimate (an identity and unbiasedness), a user's linear field against the
//! closed-form density, a density that integrates to one,
//! sampling and density agreeing, gradients by every mode and by finite differences,
//! training, and its errors.

mod common;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::{AdjointOptions, CheckpointOptions};
use node_models::cnf::two_circles;
use node_models::ffjord::{Activation, Ffjord, FfjordConfig, JvpField, Noise, Trace};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};

fn small() -> FfjordConfig {
    FfjordConfig {
        dim: 2,
        hidden: vec![8, 8],
        activation: Activation::Tanh,
        t1: 1.0,
        train_t1: false,
        base_std: 1.0,
    }
}

fn tight() -> SolveOptions {
    SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-10, 1e-10)
}

fn build(
    cfg: &FfjordConfig,
    gradient: Gradient,
    opts: SolveOptions,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<(VarMap, Ffjord)> {
    let varmap = VarMap::new();
    let flow = Ffjord::new(
        cfg,
        opts,
        gradient,
        VarBuilder::from_varmap(&varmap, dtype, dev),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(seed))?;
    Ok((varmap, flow))
}

/// The Jacobian `∂f/∂z` at each point by autograd, one backward pass per output coordinate
/// (points are independent, so `∂(Σ_b f_i(z_b))/∂z_b` is row `i` at point `b`): `[B][D][D]`.
fn jacobian(flow: &Ffjord, t: f64, z: &Tensor) -> Result<Vec<Vec<Vec<f64>>>> {
    let (b, d) = z.dims2()?;
    // rows[i][b]: row i of the Jacobian at point b.
    let rows = (0..d)
        .map(|i| -> Result<Vec<Vec<f64>>> {
            let zv = Var::from_tensor(z)?;
            let f = flow.field().forward(t, zv.as_tensor())?;
            let grads = f.narrow(1, i, 1)?.sum_all()?.backward()?;
            Ok(grads.get(zv.as_tensor()).expect("a gradient").to_vec2()?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((0..b)
        .map(|p| rows.iter().map(|r| r[p].clone()).collect())
        .collect())
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) -> Result<()> {
    ensure!(got.len() == want.len(), "{what}: lengths");
    for (g, w) in got.iter().zip(want) {
        ensure!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
    Ok(())
}

fn products_match_autograd(dev: &Device) -> Result<()> {
    for activation in [Activation::Tanh, Activation::Softplus] {
        let cfg = FfjordConfig {
            dim: 3,
            hidden: vec![5, 4],
            activation,
            ..small()
        };
        let (_, flow) = build(&cfg, Gradient::Backprop, tight(), 1, DType::F64, dev)?;
        let mut rng = Rng::new(2);
        let z = rng.normal_tensor(&[4, 3], 0.0, 1.0, DType::F64, dev)?;
        let v = rng.normal_tensor(&[2, 4, 3], 0.0, 1.0, DType::F64, dev)?;
        for t in [0.0, 0.3, 1.0] {
            let jac = jacobian(&flow, t, &z)?;
            let (f, jv) = flow.field().jvp(t, &z, &v)?;
            let plain = flow.field().forward(t, &z)?;
            ensure!(f.to_vec2::<f64>()? == plain.to_vec2::<f64>()?);
            let (jv, v) = (jv.to_vec3::<f64>()?, v.to_vec3::<f64>()?);
            for k in 0..2 {
                for (b, jac) in jac.iter().enumerate() {
                    let want: Vec<f64> = jac
                        .iter()
                        .map(|row| row.iter().zip(&v[k][b]).map(|(j, x)| j * x).sum())
                        .collect();
                    close(&jv[k][b], &want, 1e-12, &format!("{activation:?} t {t}"))?;
                }
            }
            // The exact trace and Frobenius norm, and ‖f‖², against the same Jacobian.
            let (f, tr, kinetic, frob) = flow.field().dynamics_regularized(t, &z, &Trace::Exact)?;
            let want_tr: Vec<f64> = jac.iter().map(|j| (0..3).map(|i| j[i][i]).sum()).collect();
            let want_frob: Vec<f64> = jac
                .iter()
                .map(|j| j.iter().flatten().map(|x| x * x).sum())
                .collect();
            let want_kin: Vec<f64> = f
                .to_vec2::<f64>()?
                .iter()
                .map(|r| r.iter().map(|x| x * x).sum())
                .collect();
            close(&tr.to_vec1::<f64>()?, &want_tr, 1e-12, "trace")?;
            close(&frob.to_vec1::<f64>()?, &want_frob, 1e-12, "‖∂f/∂z‖²_F")?;
            close(&kinetic.to_vec1::<f64>()?, &want_kin, 1e-12, "‖f‖²")?;
            ensure!(
                want_tr.iter().any(|w| w.abs() > 1e-3),
                "a trace worth testing"
            );
        }
    }
    Ok(())
}

fn hutchinson_over_the_basis_is_exact(dev: &Device) -> Result<()> {
    // Σᵢ eᵢᵀ J eᵢ = tr J and Σᵢ ‖J eᵢ‖² = ‖J‖²_F: the estimator's code path with the basis
    // vectors as noise (each point repeated D times) must give the exact values.
    let cfg = FfjordConfig {
        dim: 3,
        hidden: vec![6],
        ..small()
    };
    let (_, flow) = build(&cfg, Gradient::Backprop, tight(), 3, DType::F64, dev)?;
    let z = Rng::new(4).normal_tensor(&[5, 3], 0.0, 1.0, DType::F64, dev)?;
    let reps = Tensor::cat(&[&z, &z, &z], 0)?;
    let eye = Tensor::eye(3, DType::F64, dev)?;
    let eps = eye
        .unsqueeze(1)?
        .broadcast_as((3, 5, 3))?
        .reshape((15, 3))?;
    let t = 0.4;
    let (_, tr, _, frob) = flow
        .field()
        .dynamics_regularized(t, &reps, &Trace::Hutchinson(eps))?;
    let (_, want_tr, _, want_frob) = flow.field().dynamics_regularized(t, &z, &Trace::Exact)?;
    let per_point = |x: Tensor| -> Result<Vec<f64>> { Ok(x.reshape((3, 5))?.sum(0)?.to_vec1()?) };
    close(&per_point(tr)?, &want_tr.to_vec1()?, 1e-12, "trace")?;
    close(&per_point(frob)?, &want_frob.to_vec1()?, 1e-12, "Frobenius")?;
    Ok(())
}

fn gradient_modes_agree(dev: &Device) -> Result<()> {
    // The mean NLL's gradient (plain, and with the regularizers) by the adjoint, the
    // interpolated adjoint and checkpointing against backprop through the same tight solve,
    // with the exact trace and with one fixed Hutchinson noise.
    let x = Rng::new(6).normal_tensor(&[8, 2], 0.0, 0.7, DType::F64, dev)?;
    let eps = Noise::Rademacher.sample(8, 2, &mut Rng::new(7), DType::F64, dev)?;
    let adjoint = AdjointOptions::default().tolerances(1e-10, 1e-10);
    for (trace, regularized) in [
        (Trace::Exact, false),
        (Trace::Hutchinson(eps.clone()), false),
        (Trace::Hutchinson(eps), true),
    ] {
        let mut all = vec![];
        for gradient in [
            Gradient::Backprop,
            Gradient::Adjoint(adjoint.clone()),
            Gradient::Adjoint(
                adjoint
                    .clone()
                    .state(node_adjoint::AdjointState::Interpolated),
            ),
            Gradient::Checkpoint(CheckpointOptions::default()),
        ] {
            let (varmap, flow) = build(&small(), gradient, tight(), 5, DType::F64, dev)?;
            let xv = Var::from_tensor(&x)?;
            let loss = if regularized {
                let r = flow.log_prob_regularized(xv.as_tensor(), &trace)?;
                ((r.log_p.mean_all()?.neg()? + r.kinetic.mean_all()?.affine(0.3, 0.0)?)?
                    + r.jacobian.mean_all()?.affine(0.2, 0.0)?)?
            } else {
                flow.log_prob_with(xv.as_tensor(), &trace)?
                    .0
                    .mean_all()?
                    .neg()?
            };
            let grads = loss.backward()?;
            let mut flat = vec![];
            for v in node_adjoint::sorted_vars(&varmap) {
                let g = grads.get(&v).expect("every parameter gets a gradient");
                flat.extend(g.flatten_all()?.to_vec1::<f64>()?);
            }
            let gx = grads.get(&xv).expect("x's gradient");
            flat.extend(gx.flatten_all()?.to_vec1::<f64>()?);
            all.push((loss.to_scalar::<f64>()?, flat));
        }
        let bp = &all[0];
        let scale = bp.1.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        ensure!(scale > 1e-3);
        for (mode, other) in all.iter().enumerate().skip(1) {
            ensure!(
                (other.0 - bp.0).abs() < 1e-9,
                "losses {} vs {}",
                other.0,
                bp.0
            );
            for (a, b) in other.1.iter().zip(&bp.1) {
                ensure!(
                    (a - b).abs() <= 1e-6 * scale,
                    "{trace:?} regularized {regularized}, mode {mode}: {a} vs {b} (scale {scale})"
                );
            }
        }
    }
    Ok(())
}

candle_core::test_device!(
    products_match_autograd,
    products_cpu,
    products_cuda,
    products_metal
);
candle_core::test_device!(
    hutchinson_over_the_basis_is_exact,
    basis_cpu,
    basis_cuda,
    basis_metal
);
candle_core::test_device!(
    gradient_modes_agree,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);

#[test]
fn hutchinson_is_unbiased() -> Result<()> {
    // Over many noise draws the estimates' mean is the exact trace (and ‖J‖²_F), within four
    // standard errors, for both noises; Rademacher's variance is the smaller (no diagonal
    // term), and neither estimate is exact draw by draw.
    let dev = Device::Cpu;
    let cfg = FfjordConfig {
        dim: 4,
        hidden: vec![16],
        ..small()
    };
    let (_, flow) = build(&cfg, Gradient::Backprop, tight(), 8, DType::F64, &dev)?;
    let z = Rng::new(9).normal_tensor(&[1, 4], 0.0, 1.0, DType::F64, &dev)?;
    let (_, exact_tr, _, exact_frob) = flow.field().dynamics_regularized(0.2, &z, &Trace::Exact)?;
    let (exact_tr, exact_frob) = (
        exact_tr.to_vec1::<f64>()?[0],
        exact_frob.to_vec1::<f64>()?[0],
    );
    let n = 4000;
    let zs = z.broadcast_as((n, 4))?.contiguous()?;
    let mut variances = vec![];
    for noise in [Noise::Rademacher, Noise::Gaussian] {
        let eps = noise.sample(n, 4, &mut Rng::new(10), DType::F64, &dev)?;
        let (_, tr, _, frob) =
            flow.field()
                .dynamics_regularized(0.2, &zs, &Trace::Hutchinson(eps))?;
        for (what, samples, exact) in [
            ("trace", tr.to_vec1::<f64>()?, exact_tr),
            ("Frobenius", frob.to_vec1::<f64>()?, exact_frob),
        ] {
            let mean = samples.iter().sum::<f64>() / n as f64;
            let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se = (var / n as f64).sqrt();
            ensure!(
                var > 1e-6,
                "{noise:?} {what}: an estimate, not exact ({var})"
            );
            ensure!(
                (mean - exact).abs() <= 4.0 * se,
                "{noise:?} {what}: mean {mean} vs exact {exact} (standard error {se})"
            );
            if what == "trace" {
                variances.push(var);
            }
        }
    }
    ensure!(
        variances[0] < variances[1],
        "Rademacher's variance {} below Gaussian's {}",
        variances[0],
        variances[1]
    );
    Ok(())
}

#[test]
fn hutchinson_log_prob_is_unbiased() -> Result<()> {
    // One point repeated with 2000 noise draws in one solve: the trajectory does not depend on
    // ε, so the estimated log p(x) averages to the exact one.
    let dev = Device::Cpu;
    let opts = SolveOptions::default().tolerances(1e-8, 1e-8);
    let (_, flow) = build(&small(), Gradient::Backprop, opts, 11, DType::F64, &dev)?;
    let x = Tensor::new(&[[0.3f64, -0.8]], &dev)?;
    let exact = flow.log_prob(&x)?.to_vec1::<f64>()?[0];
    let n = 2000;
    let eps = Noise::Rademacher.sample(n, 2, &mut Rng::new(12), DType::F64, &dev)?;
    let xs = x.broadcast_as((n, 2))?.contiguous()?;
    let (lp, _) = flow.log_prob_with(&xs, &Trace::Hutchinson(eps))?;
    let lp = lp.to_vec1::<f64>()?;
    let mean = lp.iter().sum::<f64>() / n as f64;
    let var = lp.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    ensure!(var > 1e-8, "an estimate, not exact ({var})");
    ensure!(
        (mean - exact).abs() <= 4.0 * se,
        "mean {mean} vs exact {exact} (standard error {se})"
    );
    Ok(())
}

#[test]
fn density_integrates_to_one() -> Result<()> {
    // Σ p(x) h² over a grid that holds the mass is 1 for a density, whatever the flow did to
    // the base: a trace with the wrong sign, scale or time direction fails this.
    let dev = Device::Cpu;
    let (_, flow) = build(&small(), Gradient::Backprop, tight(), 13, DType::F64, &dev)?;
    let (n, half) = (161usize, 8.0f64);
    let h = 2.0 * half / (n - 1) as f64;
    let mut pts = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        for j in 0..n {
            pts.extend([-half + i as f64 * h, -half + j as f64 * h]);
        }
    }
    let x = Tensor::from_vec(pts, (n * n, 2), &dev)?;
    let lp = flow.log_prob(&x)?;
    let base = flow.base_log_prob(&x)?;
    let mass = lp.exp()?.sum_all()?.to_scalar::<f64>()? * h * h;
    let base_mass = base.exp()?.sum_all()?.to_scalar::<f64>()? * h * h;
    let gap = (&lp - &base)?.abs()?.max_all()?.to_scalar::<f64>()?;
    ensure!(gap > 0.1, "the flow must reshape the density ({gap})");
    ensure!(
        (base_mass - 1.0).abs() < 1e-6,
        "the grid holds the base ({base_mass})"
    );
    ensure!((mass - 1.0).abs() < 1e-6, "∫ p = {mass}");
    Ok(())
}

#[test]
fn sampling_and_density_agree() -> Result<()> {
    // Pushing z through the flow gives x and log p(x); solving back from x gives the same.
    let dev = Device::Cpu;
    let (_, flow) = build(&small(), Gradient::Backprop, tight(), 14, DType::F64, &dev)?;
    let z = Rng::new(15).normal_tensor(&[16, 2], 0.0, 1.0, DType::F64, &dev)?;
    let (x, lp_forward) = flow.sample_from(&z)?;
    let lp_back = flow.log_prob(&x)?.to_vec1::<f64>()?;
    let moved = (&x - &z)?.abs()?.max_all()?.to_scalar::<f64>()?;
    ensure!(moved > 1e-2, "the flow must move the points ({moved})");
    let base = flow.base_log_prob(&z)?.to_vec1::<f64>()?;
    let mut changed = 0.0f64;
    for ((a, b), base) in lp_forward.to_vec1::<f64>()?.iter().zip(&lp_back).zip(&base) {
        ensure!((a - b).abs() < 1e-7, "{a} vs {b}");
        changed = changed.max((a - base).abs());
    }
    ensure!(changed > 1e-2, "the density must change ({changed})");
    Ok(())
}

#[test]
fn adjoint_matches_finite_differences() -> Result<()> {
    // dNLL/dθ for entries of every parameter tensor by central differences (f64, tight
    // solves, step 1e-5), with a fixed Hutchinson noise: the estimate is a smooth function of
    // θ too.
    let dev = Device::Cpu;
    let x = Rng::new(16).normal_tensor(&[6, 2], 0.0, 0.7, DType::F64, &dev)?;
    let eps = Noise::Gaussian.sample(6, 2, &mut Rng::new(17), DType::F64, &dev)?;
    let trace = Trace::Hutchinson(eps);
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-11, 1e-11));
    let opts = SolveOptions::default().tolerances(1e-11, 1e-11);
    let cfg = FfjordConfig {
        activation: Activation::Softplus,
        ..small()
    };
    let (varmap, flow) = build(&cfg, adjoint, opts, 18, DType::F64, &dev)?;
    let nll = || flow.log_prob_with(&x, &trace)?.0.mean_all()?.neg();
    let entries = |len: usize| vec![0, len - 1];
    let checked = common::check_finite_differences(&varmap, nll, entries, 1e-5, 1e-6)?;
    ensure!(
        checked == 30,
        "two entries of each of 3 × 5 tensors ({checked})"
    );
    Ok(())
}

#[test]
fn adam_steps_lower_the_nll_of_two_circles() -> Result<()> {
    // Trained with Hutchinson's estimate (fresh noise each step), judged by the exact NLL.
    let dev = Device::Cpu;
    let cfg = FfjordConfig {
        hidden: vec![16, 16],
        ..FfjordConfig::default()
    };
    let opts = SolveOptions::default().tolerances(1e-4, 1e-4);
    let gradient = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-4, 1e-4));
    let (varmap, flow) = build(&cfg, gradient, opts, 19, DType::F32, &dev)?;
    let mut rng = Rng::new(20);
    let x = two_circles(128, 0.06, &mut rng, DType::F32, &dev)?;
    let adam = AdamConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), adam)?;
    let exact =
        |f: &Ffjord| -> Result<f32> { Ok(f.log_prob(&x)?.mean_all()?.neg()?.to_scalar::<f32>()?) };
    let first = exact(&flow)?;
    for _ in 0..20 {
        let eps = Noise::Rademacher.sample(128, 2, &mut rng, DType::F32, &dev)?;
        let (lp, _) = flow.log_prob_with(&x, &Trace::Hutchinson(eps))?;
        opt.backward_step(&lp.mean_all()?.neg()?)?;
    }
    let last = exact(&flow)?;
    ensure!(last < first - 0.1, "NLL {first} → {last}");
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let dev = Device::Cpu;
    let (_, flow) = build(&small(), Gradient::Backprop, tight(), 1, DType::F32, &dev)?;
    for bad in [
        Tensor::zeros((4, 3), DType::F32, &dev)?,
        Tensor::zeros(4, DType::F32, &dev)?,
        Tensor::zeros((0, 2), DType::F32, &dev)?,
    ] {
        let e = flow.log_prob(&bad).unwrap_err().to_string();
        ensure!(e.contains("[batch ≥ 1, 2]"), "{e}");
        ensure!(flow.sample_from(&bad).is_err());
    }
    let x = Tensor::zeros((4, 2), DType::F32, &dev)?;
    let eps = Tensor::ones((3, 2), DType::F32, &dev)?;
    let e = flow
        .log_prob_with(&x, &Trace::Hutchinson(eps))
        .unwrap_err()
        .to_string();
    ensure!(e.contains("Hutchinson noise"), "{e}");
    let e = flow
        .field()
        .jvp(0.0, &x, &Tensor::zeros((1, 4, 3), DType::F32, &dev)?)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("tangents must be [K ≥ 1, 4, 2]"), "{e}");
    for (cfg, what) in [
        (
            FfjordConfig {
                hidden: vec![],
                ..small()
            },
            "hidden",
        ),
        (
            FfjordConfig {
                hidden: vec![4, 0],
                ..small()
            },
            "hidden",
        ),
        (FfjordConfig { dim: 0, ..small() }, "dim"),
        (FfjordConfig { t1: 0.0, ..small() }, "t1"),
        (
            FfjordConfig {
                base_std: -1.0,
                ..small()
            },
            "base_std",
        ),
    ] {
        let vm = VarMap::new();
        let e = Ffjord::new(
            &cfg,
            tight(),
            Gradient::Backprop,
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap_err()
        .to_string();
        ensure!(e.contains(what), "{e}");
    }
    Ok(())
}

/// A user's field: `f(z) = A z`, whose flow is `z(t) = e^{At} z(0)` with
/// `log p(x) = log N(e^{−At₁} x) − t₁ tr A`.
#[derive(Clone, Debug)]
struct LinearField {
    a: Var,
    /// Make `jvp` return a wrong shape.
    broken: bool,
}

impl JvpField for LinearField {
    fn dim(&self) -> usize {
        2
    }

    fn jvp(&self, _t: f64, z: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let at = self.a.as_tensor().t()?;
        let (k, b, d) = v.dims3()?;
        let jv = v.reshape((k * b, d))?.matmul(&at)?.reshape((k, b, d))?;
        let f = z.matmul(&at)?;
        Ok((if self.broken { f.t()? } else { f }, jv))
    }

    fn params(&self) -> Vec<Var> {
        vec![self.a.clone()]
    }
}

/// `e^{M}` for a 2 × 2 matrix, by its Taylor series (f64, 40 terms: |M| ≤ 2 here).
fn expm(m: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let mul = |p: [[f64; 2]; 2], q: [[f64; 2]; 2]| {
        let mut r = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                r[i][j] = p[i][0] * q[0][j] + p[i][1] * q[1][j];
            }
        }
        r
    };
    let (mut sum, mut term) = ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]);
    for n in 1..40 {
        term = mul(term, m).map(|row| row.map(|x| x / n as f64));
        for i in 0..2 {
            for j in 0..2 {
                sum[i][j] += term[i][j];
            }
        }
    }
    sum
}

#[test]
fn a_users_linear_field_has_the_closed_form_density() -> Result<()> {
    let dev = Device::Cpu;
    let a = [[-0.3, 0.8], [-0.5, 0.2]];
    let (t1, std) = (1.5, 0.8);
    let field = LinearField {
        a: Var::from_tensor(&Tensor::new(&a, &dev)?)?,
        broken: false,
    };
    let flow = Ffjord::with_field(field.clone(), t1, std, tight(), Gradient::Backprop)?;
    let x = Rng::new(21).normal_tensor(&[5, 2], 0.0, 1.0, DType::F64, &dev)?;
    let back = expm(a.map(|r| r.map(|v| -v * t1)));
    let trace = a[0][0] + a[1][1];
    let want: Vec<f64> = x
        .to_vec2::<f64>()?
        .iter()
        .map(|p| {
            let z = [
                back[0][0] * p[0] + back[0][1] * p[1],
                back[1][0] * p[0] + back[1][1] * p[1],
            ];
            let r2 = z[0] * z[0] + z[1] * z[1];
            -0.5 * r2 / (std * std) - (2.0 * std::f64::consts::PI * std * std).ln() - t1 * trace
        })
        .collect();
    close(&flow.log_prob(&x)?.to_vec1()?, &want, 1e-9, "log p")?;
    // Forwards: x = e^{At₁} z, with the same log p.
    let z = Rng::new(22).normal_tensor(&[5, 2], 0.0, std, DType::F64, &dev)?;
    let (xs, lp) = flow.sample_from(&z)?;
    let fwd = expm(a.map(|r| r.map(|v| v * t1)));
    for (p, q) in z.to_vec2::<f64>()?.iter().zip(xs.to_vec2::<f64>()?) {
        let want = [
            fwd[0][0] * p[0] + fwd[0][1] * p[1],
            fwd[1][0] * p[0] + fwd[1][1] * p[1],
        ];
        close(&q, &want, 1e-9, "sample")?;
    }
    close(
        &lp.to_vec1()?,
        &flow.log_prob(&xs)?.to_vec1()?,
        1e-9,
        "both ways",
    )?;
    // A field whose products come back in the wrong shape is refused.
    let broken = LinearField {
        broken: true,
        ..field
    };
    let flow = Ffjord::with_field(broken, t1, std, tight(), Gradient::Backprop)?;
    let e = flow.log_prob(&x).unwrap_err().to_string();
    ensure!(e.contains("the field's jvp must give [5, 2]"), "{e}");
    let e = Ffjord::with_field(flow.field().clone(), -1.0, std, tight(), Gradient::Backprop)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("t1 must be finite and positive"), "{e}");
    Ok(())
}

#[test]
fn a_learned_end_time_gets_its_gradient() -> Result<()> {
    // FFJORD's train_T: t₁ · exp(s). At s = 0 the flow is the fixed-time one; the NLL's
    // gradient to s (and to every other parameter) matches central differences with the
    // adjoint, and backprop's.
    let dev = Device::Cpu;
    let cfg = FfjordConfig {
        train_t1: true,
        ..small()
    };
    let x = Rng::new(23).normal_tensor(&[6, 2], 0.0, 0.7, DType::F64, &dev)?;
    let (_, fixed) = build(&small(), Gradient::Backprop, tight(), 24, DType::F64, &dev)?;
    let (_, learned) = build(&cfg, Gradient::Backprop, tight(), 24, DType::F64, &dev)?;
    ensure!(learned.t1()? == 1.0);
    let (a, b) = (fixed.log_prob(&x)?, learned.log_prob(&x)?);
    close(&a.to_vec1()?, &b.to_vec1()?, 1e-14, "s = 0")?;

    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-11, 1e-11));
    let opts = SolveOptions::default().tolerances(1e-11, 1e-11);
    let mut grads_of_s = vec![];
    for gradient in [adjoint, Gradient::Backprop] {
        let (varmap, flow) = build(&cfg, gradient, opts.clone(), 25, DType::F64, &dev)?;
        let s = varmap.data().lock().unwrap()["log_t1_scale"].clone();
        s.set(&Tensor::new(0.2f64, &dev)?)?;
        ensure!((flow.t1()? - 0.2f64.exp()).abs() < 1e-15);
        let nll = || flow.log_prob(&x)?.mean_all()?.neg();
        let grads = nll()?.backward()?;
        let g = grads.get(&s).expect("s gets a gradient");
        grads_of_s.push(g.to_scalar::<f64>()?);
        // Two entries of each of the 15 layer tensors, and the one of s.
        let entries = |len: usize| if len == 1 { vec![0] } else { vec![0, len - 1] };
        let checked = common::check_finite_differences(&varmap, nll, entries, 1e-5, 1e-6)?;
        ensure!(checked == 31, "{checked}");
    }
    ensure!(grads_of_s[0].abs() > 1e-3, "a gradient worth testing");
    ensure!(
        (grads_of_s[0] - grads_of_s[1]).abs() <= 1e-6 * grads_of_s[1].abs(),
        "adjoint {} vs backprop {}",
        grads_of_s[0],
        grads_of_s[1]
    );
    Ok(())
}

/// `jvp_batch` with every point at one time is `jvp` there; with a time per point, each row
/// is `jvp` at its own time.
fn per_point_products(dev: &Device) -> Result<()> {
    let (_, flow) = build(&small(), Gradient::Backprop, tight(), 3, DType::F64, dev)?;
    let field = flow.field();
    let z = Rng::new(11).normal_tensor(&[4, 2], 0.0, 1.0, DType::F64, dev)?;
    let v = Rng::new(12).normal_tensor(&[3, 4, 2], 0.0, 1.0, DType::F64, dev)?;
    let same = Tensor::full(0.37f64, 4, dev)?;
    let (f, jv) = field.jvp_batch(&same, &z, &v)?;
    let (f0, jv0) = field.jvp(0.37, &z, &v)?;
    let flat = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1::<f64>()?) };
    close(&flat(&f)?, &flat(&f0)?, 1e-13, "f")?;
    close(&flat(&jv)?, &flat(&jv0)?, 1e-13, "products")?;
    let ts = [0.0, 0.4, 0.9, 1.3];
    let (f, jv) = field.jvp_batch(&Tensor::new(&ts, dev)?, &z, &v)?;
    for (b, &t) in ts.iter().enumerate() {
        let (fb, jvb) = field.jvp(t, &z.narrow(0, b, 1)?, &v.narrow(1, b, 1)?)?;
        close(
            &flat(&f.narrow(0, b, 1)?)?,
            &flat(&fb)?,
            1e-13,
            "f at its time",
        )?;
        close(
            &flat(&jv.narrow(1, b, 1)?)?,
            &flat(&jvb)?,
            1e-13,
            "products at its time",
        )?;
    }
    Ok(())
}

candle_core::test_device!(
    per_point_products,
    per_point_products_cpu,
    per_point_products_cuda,
    per_point_products_metal
);

/// `log_prob_independent`: a point's value is the same, bit for bit, alone and in any
/// batch; the batch solve's (`log_prob`) is not, and the two agree to the tolerance.
#[test]
fn per_point_log_prob_does_not_depend_on_the_batch() -> Result<()> {
    let dev = &Device::Cpu;
    let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
    let (_, flow) = build(&small(), Gradient::Backprop, opts, 4, DType::F64, dev)?;
    let x = two_circles(6, 0.06, &mut Rng::new(9), DType::F64, dev)?;
    let (lp, _) = flow.log_prob_independent(&x, &Trace::Exact)?;
    let lp = lp.to_vec1::<f64>()?;
    let joint = flow.log_prob(&x)?.to_vec1::<f64>()?;
    let reversed = Tensor::cat(
        &(0..6)
            .rev()
            .map(|i| x.narrow(0, i, 1))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let (lp_rev, _) = flow.log_prob_independent(&reversed, &Trace::Exact)?;
    let lp_rev = lp_rev.to_vec1::<f64>()?;
    let mut joint_differs = false;
    for i in 0..6 {
        let xi = x.narrow(0, i, 1)?;
        let alone = flow
            .log_prob_independent(&xi, &Trace::Exact)?
            .0
            .to_vec1::<f64>()?[0];
        ensure!(
            lp[i] == alone,
            "point {i}: {} in the batch, {alone} alone",
            lp[i]
        );
        ensure!(lp_rev[5 - i] == alone, "point {i} in the reversed batch");
        let joint_alone = flow.log_prob(&xi)?.to_vec1::<f64>()?[0];
        joint_differs |= joint[i] != joint_alone;
        ensure!(
            (lp[i] - joint[i]).abs() < 1e-4,
            "point {i}: {} per point, {} in one solve",
            lp[i],
            joint[i]
        );
    }
    ensure!(
        joint_differs,
        "the batch solve's values depend on the batch"
    );
    Ok(())
}

/// Its gradients by the adjoint against backprop through the per-point solves, the exact
/// trace and Hutchinson's.
#[test]
fn per_point_gradients_by_the_adjoint() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Rng::new(6).normal_tensor(&[5, 2], 0.0, 0.7, DType::F64, dev)?;
    let eps = Noise::Rademacher.sample(5, 2, &mut Rng::new(7), DType::F64, dev)?;
    let adjoint = AdjointOptions::default().tolerances(1e-10, 1e-10);
    for trace in [Trace::Exact, Trace::Hutchinson(eps)] {
        let mut all = vec![];
        for gradient in [Gradient::Backprop, Gradient::Adjoint(adjoint.clone())] {
            let (varmap, flow) = build(&small(), gradient, tight(), 5, DType::F64, dev)?;
            let xv = Var::from_tensor(&x)?;
            let (lp, stats) = flow.log_prob_independent(xv.as_tensor(), &trace)?;
            let loss = lp.mean_all()?.neg()?;
            let grads = loss.backward()?;
            ensure!(stats.nfe_forward > 0);
            let mut flat = vec![];
            for v in node_adjoint::sorted_vars(&varmap) {
                let g = grads.get(&v).expect("every parameter gets a gradient");
                flat.extend(g.flatten_all()?.to_vec1::<f64>()?);
            }
            flat.extend(
                grads
                    .get(&xv)
                    .expect("x's gradient")
                    .flatten_all()?
                    .to_vec1::<f64>()?,
            );
            all.push(flat);
        }
        let scale = all[0].iter().fold(0.0f64, |m, g| m.max(g.abs()));
        ensure!(scale > 1e-3);
        for (a, b) in all[1].iter().zip(&all[0]) {
            ensure!((a - b).abs() <= 1e-6 * scale, "{trace:?}: {a} vs {b}");
        }
    }
    Ok(())
}

#[test]
fn per_point_errors() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Rng::new(6).normal_tensor(&[3, 2], 0.0, 0.7, DType::F64, dev)?;
    let check = Gradient::Checkpoint(CheckpointOptions::default());
    let (_, flow) = build(&small(), check, tight(), 5, DType::F64, dev)?;
    let e = flow
        .log_prob_independent(&x, &Trace::Exact)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("backprop or the adjoint"), "{e}");
    let learned = FfjordConfig {
        train_t1: true,
        ..small()
    };
    let (_, flow) = build(&learned, Gradient::Backprop, tight(), 5, DType::F64, dev)?;
    let e = flow
        .log_prob_independent(&x, &Trace::Exact)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("learned"), "{e}");
    // A field without the per-point form.
    let field = LinearField {
        a: Var::from_tensor(&Tensor::new(&[[0.1f64, 0.2], [-0.3, 0.0]], dev)?)?,
        broken: false,
    };
    let flow = Ffjord::with_field(field, 1.0, 1.0, tight(), Gradient::Backprop)?;
    let e = flow
        .log_prob_independent(&x, &Trace::Exact)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("jvp_batch"), "{e}");
    Ok(())
}
