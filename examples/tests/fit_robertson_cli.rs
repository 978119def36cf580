//! The stiff parameter fit end to end: the fit improves, it resumes exactly, the backsolve
//! adjoint fails with a clear error, bad options are refused.

mod common;

use anyhow::Result;
use common::{metric, ok, run_with_defaults, tensors};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("fit-robertson-cli", name)
}

/// A small, fast fit (6 observations, loose tolerances), each setting replaced where `extra`
/// gives its flag.
fn fit(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--observations", "6"],
        ["--rtol", "1e-5"],
        ["--iters", "8"],
        ["--checkpoint-every", "4"],
    ];
    run_with_defaults(env!("CARGO_BIN_EXE_fit-robertson"), out, &defaults, extra)
}

#[test]
fn fits_and_resumes_bit_for_bit() -> Result<()> {
    let whole = tmp("whole");
    let o = fit(whole.path(), &[]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("| k2 | 3e7 | 9e6 |"), "{stdout}");
    let rmse = metric(whole.path(), "rmse");
    assert_eq!(rmse.len(), 2);
    // Measured: 0.467 over the first 4 iterations, 0.254 over the next 4.
    assert!(rmse[1] < 0.7 * rmse[0], "the misfit falls: {rmse:?}");
    // The first guess of k2 is 0.3 × the truth: the fit moves it up.
    let k2 = metric(whole.path(), "k2");
    assert!(k2[1] > k2[0] && k2[0] > 9e6, "{k2:?}");

    let pieces = tmp("pieces");
    ok(&fit(pieces.path(), &["--stop-after-steps", "4"]));
    let o = fit(pieces.path(), &["--resume"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("resumed from"));
    assert_eq!(
        tensors(&whole.path().join("checkpoint.safetensors")),
        tensors(&pieces.path().join("checkpoint.safetensors")),
        "the log-factors, Adam's moments and step count: the same as one run"
    );
    assert_eq!(metric(whole.path(), "rmse"), metric(pieces.path(), "rmse"));
    Ok(())
}

#[test]
fn backsolve_fails_clearly_and_bad_options_are_refused() -> Result<()> {
    // The paper's adjoint integrates y backwards, where Robertson's fast modes explode.
    let out = tmp("backsolve");
    let o = fit(out.path(), &["--adjoint", "backsolve", "--iters", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ODE solve failed") && !err.contains("panicked"),
        "{err}"
    );
    for bad in [
        ["--iters", "0"],
        ["--rtol", "0"],
        ["--lr", "nan"],
        ["--noise", "-1"],
        ["--observations", "1"],
        ["--method", "rk45"],
    ] {
        let o = fit(out.path(), &bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = fit(out.path(), &["--guess", "1,-2,1"]);
    common::fails_saying(&o, "must be positive numbers");
    let o = fit(out.path(), &["--guess", "1,1"]);
    common::fails_saying(&o, "needs 3 factors");
    Ok(())
}
