//! Gradients through IMEX solves (KenCarp4 on a split field): the adjoint's reverse solve is
//! split too (the explicit part's adjoint only evaluated), with `y` integrated backwards or
//! interpolated, against central differences of the forward solve; parameters in both parts,
//! one of them shared.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{odeint_adjoint, with_params, AdjointOptions, AdjointState, ParamVectorField};
use node_solvers::{odeint, Method, SolveOptions, Split, WithJacobian};

/// Grid points of the diffusion.
const N: usize = 12;

/// The Dirichlet Laplacian on `N` points of `(0, 1)`, `(N+1)²·tridiag(1, −2, 1)`.
fn laplacian(dev: &Device) -> candle_core::Result<Tensor> {
    let c = ((N + 1) * (N + 1)) as f64;
    let m: Vec<f64> = (0..N * N)
        .map(|e| match (e / N).abs_diff(e % N) {
            0 => -2.0 * c,
            1 => c,
            _ => 0.0,
        })
        .collect();
    Tensor::from_vec(m, (N, N), dev)
}

/// The reaction `θ0 sin y + θ1 + s y²`, explicit.
fn reaction(theta: &Tensor, s: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let th0 = theta.narrow(0, 0, 1)?;
    let th1 = theta.narrow(0, 1, 1)?;
    let r = y.sin()?.broadcast_mul(&th0)?.broadcast_add(&th1)?;
    r + y.sqr()?.broadcast_mul(s)?
}

/// The diffusion `D L y − s y`, implicit (stiff for D = 0.1: eigenvalues down to
/// −4D(N+1)² = −68).
fn diffusion(d: &Tensor, s: &Tensor, lap: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let dy = lap.matmul(&y.unsqueeze(1)?)?.squeeze(1)?;
    dy.broadcast_mul(d)? - y.broadcast_mul(s)?
}

/// `L = Σ w_i y_i(0.3) + Σ w'_i y_i(1)`.
fn loss(ys: &Tensor) -> candle_core::Result<Tensor> {
    let n = ys.dim(1)?;
    let w: Vec<f64> = (0..3 * n)
        .map(|e| match e / n {
            0 => 0.0,
            1 => ((e % n) as f64 * 0.7).cos(),
            _ => 1.0 - 0.1 * (e % n) as f64,
        })
        .collect();
    (ys * Tensor::from_vec(w, (3, n), ys.device())?)?.sum_all()
}

fn imex_adjoint_case(dev: &Device) -> Result<()> {
    // The backsolve integrates `y` backwards too, where the diffusion's fast modes grow as
    // `e^{4D(N+1)² t}`: a weak diffusion for it (e^{6.8} over the horizon); the interpolated
    // adjoint takes the stiff one (e^{68} would swamp any tolerance).
    for (state, d0) in [
        (AdjointState::Backsolve, 0.01),
        (AdjointState::Interpolated, 0.1),
    ] {
        gradients(dev, state, d0)?;
    }
    Ok(())
}

fn gradients(dev: &Device, state: AdjointState, d0: f64) -> Result<()> {
    let lap = laplacian(dev)?;
    let th0 = [0.8f64, 0.3];
    let s0 = 0.2f64;
    let y00: Vec<f64> = (1..=N)
        .map(|i| (std::f64::consts::PI * i as f64 / (N + 1) as f64).sin())
        .collect();
    let ts = [0.0, 0.3, 1.0];
    let theta = Var::new(&th0, dev)?;
    let d = Var::new(&[d0], dev)?;
    // `s` is in both parts: one parameter, its gradient the sum of both parts'.
    let s = Var::new(&[s0], dev)?;
    let (tv, sv) = (theta.clone(), s.clone());
    let explicit = with_params(
        move |_t: f64, y: &Tensor| reaction(tv.as_tensor(), sv.as_tensor(), y),
        vec![theta.clone(), s.clone()],
    );
    let (dv, sv, lv) = (d.clone(), s.clone(), lap.clone());
    let implicit = with_params(
        move |_t: f64, y: &Tensor| diffusion(dv.as_tensor(), sv.as_tensor(), &lv, y),
        vec![d.clone(), s.clone()],
    );
    let (dv, sv, lv) = (d.clone(), s.clone(), lap.clone());
    // `D L − s I`.
    let jacobian = move |_t: f64, _y: &Tensor| {
        let eye = Tensor::eye(N, candle_core::DType::F64, lv.device())?;
        lv.broadcast_mul(dv.as_tensor())? - eye.broadcast_mul(sv.as_tensor())?
    };
    let f = Split::new(explicit, WithJacobian::new(implicit, jacobian));
    assert_eq!(f.params().len(), 3, "θ, s, D: s once");
    let y0 = Var::new(y00.as_slice(), dev)?;
    // Tight: at 1e-10 the central differences themselves are off by 3.5e-5 relative in
    // dL/dy0[0] (the forward solves' step sequences differ), while the adjoint's value
    // is the same to 1e-9 at 1e-10 and at 1e-12 (measured).
    let opts = SolveOptions::default()
        .method(Method::KenCarp4)
        .tolerances(1e-12, 1e-14);
    {
        let adj = AdjointOptions::default().state(state);
        let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &adj)?;
        let grads = loss(&sol.ys)?.backward()?;
        // The forward solve is an IMEX one (the field's split survives the adjoint's
        // detaching of it), and so is the reverse solve: each evaluates explicit parts.
        assert!(sol.stats.forward().explicit_nfe > 0, "{state:?}");
        let back = sol.stats.backward();
        assert!(back.explicit_nfe > 0, "{state:?}: {back:?}");
        let got = |v: &Var| -> Result<Vec<f64>> {
            Ok(grads.get(v).expect("a gradient").to_vec1::<f64>()?)
        };
        let (g_th, g_d, g_s, g_y0) = (got(&theta)?, got(&d)?, got(&s)?, got(&y0)?);

        // Central differences of the forward (split) solve.
        let value = |th: [f64; 2], dd: f64, ss: f64, y0: &[f64]| -> Result<f64> {
            let (tt, st, dt) = (
                Tensor::new(&th, dev)?,
                Tensor::new(&[ss], dev)?,
                Tensor::new(&[dd], dev)?,
            );
            let st2 = st.clone();
            let lv = lap.clone();
            let g = Split::new(
                move |_t: f64, y: &Tensor| reaction(&tt, &st, y),
                move |_t: f64, y: &Tensor| diffusion(&dt, &st2, &lv, y),
            );
            let sol = odeint(&g, &Tensor::new(y0, dev)?, &ts, &opts)?;
            Ok(loss(&sol.ys)?.to_scalar::<f64>()?)
        };
        let h = 1e-5;
        let check = |name: &str, got: f64, up: f64, down: f64| {
            let fd = (up - down) / (2.0 * h);
            assert!(
                (got - fd).abs() < 1e-6 * fd.abs().max(1.0),
                "{state:?}: dL/d{name}: adjoint {got} against {fd}"
            );
        };
        for i in 0..2 {
            let (mut up, mut down) = (th0, th0);
            up[i] += h;
            down[i] -= h;
            check(
                &format!("θ{i}"),
                g_th[i],
                value(up, d0, s0, &y00)?,
                value(down, d0, s0, &y00)?,
            );
        }
        check(
            "D",
            g_d[0],
            value(th0, d0 + h, s0, &y00)?,
            value(th0, d0 - h, s0, &y00)?,
        );
        check(
            "s",
            g_s[0],
            value(th0, d0, s0 + h, &y00)?,
            value(th0, d0, s0 - h, &y00)?,
        );
        for i in [0, N / 2, N - 1] {
            let (mut up, mut down) = (y00.clone(), y00.clone());
            up[i] += h;
            down[i] -= h;
            check(
                &format!("y0[{i}]"),
                g_y0[i],
                value(th0, d0, s0, &up)?,
                value(th0, d0, s0, &down)?,
            );
        }
    }
    Ok(())
}

candle_core::test_device!(
    imex_adjoint_case,
    imex_adjoint_cpu,
    imex_adjoint_cuda,
    imex_adjoint_metal
);
