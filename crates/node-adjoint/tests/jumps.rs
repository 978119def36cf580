//! Gradients through a field that jumps in time, with the jump given (`jump_ts`): the three
//! gradient modes against the closed form, and checkpointing's replay against backprop.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_checkpointed, with_params, AdjointOptions, CheckpointOptions,
};
use node_solvers::{odeint, SolveOptions};

/// `dy/dt = θ·a(t)·y`, `a = 1` before `t = 1` and 3 from it on: over `[0, 2]`,
/// `y(2) = y0·e^{4θ}`, so for `L = Σ y(2)`, `dL/dθ = 4·L` and `dL/dy0 = e^{4θ}`.
fn gradients_through_a_jump(dev: &Device) -> Result<()> {
    let theta0 = 0.3f64;
    let theta = Var::new(&[theta0], dev)?;
    let th = theta.clone();
    let f = with_params(
        move |t: f64, y: &Tensor| {
            let a = if t < 1.0 { 1.0 } else { 3.0 };
            y.broadcast_mul(&th.as_tensor().affine(a, 0.0)?)
        },
        vec![theta.clone()],
    );
    let y0 = Var::new(&[1.0f64, -2.0], dev)?;
    let ts = [0.0, 0.6, 2.0];
    let opts = SolveOptions::default()
        .tolerances(1e-10, 1e-10)
        .jump_ts([1.0]);
    let loss_of = |ys: &Tensor| -> Result<Tensor> { Ok(ys.get(2)?.sum_all()?) };
    let grads = |ys: &Tensor| -> Result<(f64, f64, Vec<f64>)> {
        let loss = loss_of(ys)?;
        let g = loss.backward()?;
        Ok((
            loss.to_scalar::<f64>()?,
            g.get(&theta).expect("θ").to_vec1::<f64>()?[0],
            g.get(&y0).expect("y0").to_vec1::<f64>()?,
        ))
    };
    let direct = grads(&odeint(&f, y0.as_tensor(), &ts, &opts)?.ys)?;
    let adjoint =
        grads(&odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &AdjointOptions::default())?.ys)?;
    let ck = CheckpointOptions::default().checkpoints(3);
    let checkpointed = grads(&odeint_checkpointed(&f, y0.as_tensor(), &ts, &opts, &ck)?.ys)?;
    let growth = (4.0 * theta0).exp();
    let loss = -growth;
    for (name, (l, g_theta, g_y0)) in [
        ("backprop", &direct),
        ("adjoint", &adjoint),
        ("checkpointed", &checkpointed),
    ] {
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-7 * want.abs();
        assert!(close(*l, loss), "{name}: L = {l} vs {loss}");
        assert!(
            close(*g_theta, 4.0 * loss),
            "{name}: dL/dθ = {g_theta} vs {}",
            4.0 * loss
        );
        for g in g_y0 {
            assert!(close(*g, growth), "{name}: dL/dy0 = {g} vs {growth}");
        }
    }
    // The replay takes the forward steps, the jump's sides included: backprop's gradients.
    assert!((checkpointed.1 - direct.1).abs() <= 1e-12 * direct.1.abs());
    Ok(())
}

candle_core::test_device!(
    gradients_through_a_jump,
    through_a_jump_cpu,
    through_a_jump_cuda,
    through_a_jump_metal
);
