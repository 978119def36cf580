mod common;
use anyhow::Result;
use candle_core::{Device, Tensor};
use common::max_abs_diff;
use node_solvers::problems::{Riccati, Rotation};
use node_solvers::{odeint, Method, SolveOptions};

#[test]
fn scratch_adaptive() -> Result<()> {
    let dev = Device::Cpu;
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], &dev)?;
    for t1 in [0.5, 4.0] {
        let exact = p.exact(&y0, 0.0, t1)?;
        for tol in [1e-3, 1e-5, 1e-7, 1e-9, 1e-11] {
            let mut line = format!("riccati T {t1} tol {tol:e}:");
            for (name, m) in [
                ("dopri5", Method::Dopri5),
                ("dopri8", Method::Dopri8),
                ("adams", Method::Adams),
            ] {
                let o = SolveOptions::default().method(m).tolerances(tol, tol);
                let sol = odeint(&p.field(), &y0, &[0.0, t1], &o)?;
                let e = max_abs_diff(&sol.last()?, &exact)?;
                line += &format!(
                    " {name} {}/{} {e:.0e} |",
                    sol.stats.nfe, sol.stats.rejected_steps
                );
            }
            println!("{line}");
        }
    }
    let r = Rotation {
        decay: 0.1,
        freq: 2.0,
    };
    let y0 = Tensor::new(&[1.0f64, 0.0], &dev)?;
    let exact = r.exact(&y0, 0.0, 20.0)?;
    for tol in [1e-3, 1e-5, 1e-7, 1e-9, 1e-11] {
        let mut line = format!("rotation tol {tol:e}:");
        for (name, m) in [
            ("dopri5", Method::Dopri5),
            ("dopri8", Method::Dopri8),
            ("adams", Method::Adams),
        ] {
            let o = SolveOptions::default().method(m).tolerances(tol, tol);
            let sol = odeint(&r.field(), &y0, &[0.0, 20.0], &o)?;
            let e = max_abs_diff(&sol.last()?, &exact)?;
            line += &format!(
                " {name} {}/{} {e:.0e} |",
                sol.stats.nfe, sol.stats.rejected_steps
            );
        }
        println!("{line}");
    }
    Ok(())
}
