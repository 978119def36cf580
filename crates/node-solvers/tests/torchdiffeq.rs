//! The same solve as torchdiffeq's, on the same inputs and weights (`fixtures/torchdiffeq`,
//! written by the peer script `ode_solve.py`): `dz/dt = MLP(z³)`, MLP = Linear(2,50)–tanh–
//! Linear(50,2), batch 1024, f32, t 0 → 1.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module};
use common::max_abs_diff;
use node_solvers::{odeint, Method, SolveOptions};
use std::collections::HashMap;

fn fixture(name: &str) -> Result<HashMap<String, Tensor>> {
    let path = format!(
        "{}/../../fixtures/torchdiffeq/{name}.npz",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(Tensor::read_npz(path)?.into_iter().collect())
}

fn mlp(fx: &HashMap<String, Tensor>) -> (Linear, Linear) {
    (
        Linear::new(fx["w1"].clone(), Some(fx["b1"].clone())),
        Linear::new(fx["w2"].clone(), Some(fx["b2"].clone())),
    )
}

#[test]
fn dopri5_matches_torchdiffeq() -> Result<()> {
    let fx = fixture("ode_solve_dopri5_rtol1e-7_atol1e-9")?;
    let (l1, l2) = mlp(&fx);
    let f = |_t: f64, z: &Tensor| l2.forward(&l1.forward(&z.powf(3.0)?)?.tanh()?);
    let opts = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-7, 1e-9);
    let sol = odeint(&f, &fx["z0"].to_device(&Device::Cpu)?, &[0.0, 1.0], &opts)?;
    // Both are within their tolerance of the true solution; f32 round-off (~1e-7 relative on
    // |z| up to ~4) dominates at these tolerances.
    let d = max_abs_diff(&sol.last()?, &fx["z1"])?;
    assert!(d < 2e-5, "max |ours - torchdiffeq| = {d:e}");
    // torchdiffeq needed 38 evaluations (2 for the initial step, 6 per step).
    assert_eq!(sol.stats.nfe, 38, "{:?}", sol.stats);
    Ok(())
}

#[test]
fn rk4_fixed_matches_torchdiffeq_to_round_off() -> Result<()> {
    // torchdiffeq's `rk4` is Kutta's 3/8 rule: our `rk38`.
    let fx = fixture("ode_solve_rk4_100steps")?;
    let (l1, l2) = mlp(&fx);
    let f = |_t: f64, z: &Tensor| l2.forward(&l1.forward(&z.powf(3.0)?)?.tanh()?);
    let opts = SolveOptions::default()
        .method(Method::Rk38)
        .fixed_steps(100);
    let sol = odeint(&f, &fx["z0"], &[0.0, 1.0], &opts)?;
    let d = max_abs_diff(&sol.last()?, &fx["z1"])?;
    assert!(d < 1e-5, "max |ours - torchdiffeq| = {d:e}");
    assert_eq!(sol.stats.nfe, 400);
    Ok(())
}
