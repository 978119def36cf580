//! The multiple-shooting fit end to end: multiple shooting finds the rates where single
//! shooting from the same guess does not, the segments solved one by one fit the same, it
//! resumes exactly, and it refuses what is not its checkpoint and bad options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    tensors,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("fit-lotka-volterra-cli", name)
}

/// The default problem (101 observations over five periods), each setting replaced where
/// `extra` gives its flag.
fn fit(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--iters", "400"],
        ["--checkpoint-every", "100"],
    ];
    run_with_defaults(
        env!("CARGO_BIN_EXE_fit-lotka-volterra"),
        out,
        &defaults,
        extra,
    )
}

/// The rates' relative errors and the rollout's RMSE, from the summary printed at the end.
fn outcome(o: &Output) -> (Vec<f64>, f64) {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let errors = ["alpha", "beta", "gamma", "delta"]
        .iter()
        .map(|name| {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {name} |")))
                .unwrap_or_else(|| panic!("no row for {name}: {stdout}"));
            row.trim_end_matches(" |")
                .rsplit(" | ")
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no relative error in {row}"))
        })
        .collect();
    let rollout = stdout
        .lines()
        .find_map(|l| l.split("over [0, 20]: ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rollout RMSE: {stdout}"));
    (errors, rollout)
}

#[test]
fn multiple_shooting_finds_the_rates_single_shooting_does_not() -> Result<()> {
    let multiple = tmp("multiple");
    let o = fit(multiple.path(), &[]);
    ok(&o);
    let (errors, rollout) = outcome(&o);
    // Measured: relative errors 1–3%, rollout RMSE 0.118 (the noise is 0.05).
    assert!(errors.iter().all(|&e| e < 0.05), "{errors:?}");
    assert!(rollout < 0.2, "rollout RMSE {rollout}");
    // Twenty segments, the gaps closing.
    assert!(String::from_utf8_lossy(&o.stdout).contains("(20 segments)"));
    assert!(multiple.path().join("rollout.png").exists());
    let gap = metric(multiple.path(), "gap");
    assert!(gap[3] < 0.5 * gap[0], "{gap:?}");

    // The segments one by one: the same fit (the batched solve's steps are controlled on
    // all segments together, so not bit for bit).
    let sequential = tmp("sequential");
    let o = fit(sequential.path(), &["--sequential"]);
    ok(&o);
    for rate in ["alpha", "beta", "gamma", "delta"] {
        let (a, b) = (
            metric(multiple.path(), rate),
            metric(sequential.path(), rate),
        );
        assert!((a[3] - b[3]).abs() < 2e-3, "{rate}: {a:?} vs {b:?}");
    }
    // One batched solve against twenty.
    assert!(metric(sequential.path(), "nfe")[0] > 5.0 * metric(multiple.path(), "nfe")[0]);
    // Each segment with its own steps in the one batched solve: the one-by-one fit, bit for
    // bit (each segment's floats are those of its solve alone).
    let independent = tmp("independent");
    ok(&fit(independent.path(), &["--independent"]));
    for rate in ["alpha", "beta", "gamma", "delta"] {
        assert_eq!(
            metric(independent.path(), rate),
            metric(sequential.path(), rate),
            "{rate}"
        );
    }

    // Single shooting from the same guess settles far from the truth: measured, rates off
    // by 26–35% and a rollout RMSE of 1.69
    // (after 5000 iterations, the same).
    let single = tmp("single");
    let o = fit(single.path(), &["--shooting", "single", "--iters", "100"]);
    ok(&o);
    let (errors, rollout) = outcome(&o);
    assert!(errors.iter().all(|&e| e > 0.15), "{errors:?}");
    assert!(rollout > 1.0, "rollout RMSE {rollout}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("(1 segment)"));
    assert_eq!(metric(single.path(), "gap"), vec![0.0]);
    Ok(())
}

#[test]
fn start_states_kept_at_clean_observations_fit_exactly() -> Result<()> {
    // DiffEqFlux's way: the segments start at the observations. Right for clean data
    // (measured: every rate within 7e-5); with noise 0.05 it leaves the rates 1–12% off,
    // where trained start states keep them within 1%.
    let out = tmp("fixed");
    let o = fit(out.path(), &["--fixed-starts", "--noise", "0"]);
    ok(&o);
    let (errors, rollout) = outcome(&o);
    assert!(errors.iter().all(|&e| e < 1e-3), "{errors:?}");
    assert!(rollout < 0.01, "rollout RMSE {rollout}");
    let names: Vec<String> = tensors(&out.path().join("checkpoint.safetensors"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(
        names.iter().any(|n| n.contains("log_factor"))
            && !names.iter().any(|n| n.contains("starts")),
        "only the rates are trained: {names:?}"
    );
    Ok(())
}

#[test]
fn a_neural_field_learns_by_multiple_shooting() -> Result<()> {
    // The full fit (2000 iterations) takes two minutes in this unoptimized build: measured
    // with the release build, rollout RMSE 0.064–0.094 for seeds 0–2 against single
    // shooting's 1.63–1.71. Here its start.
    let out = tmp("neural");
    let o = fit(
        out.path(),
        &[
            "--model",
            "neural",
            "--iters",
            "200",
            "--checkpoint-every",
            "100",
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("a neural ODE (MLP 2-32-32-2)"), "{stdout}");
    assert!(!stdout.contains("| alpha |"), "no rates to show: {stdout}");
    let rmse = metric(out.path(), "rmse");
    assert!(rmse[1] < 0.8 * rmse[0], "the misfit falls: {rmse:?}");
    // A checkpoint of the rates is not the network's.
    let rates = tmp("rates");
    ok(&fit(rates.path(), &["--iters", "2"]));
    let o = fit(
        rates.path(),
        &["--model", "neural", "--resume", "--iters", "4"],
    );
    fails_saying(
        &o,
        "checkpoint of model `lotka-volterra`, not `lotka-volterra-neural`",
    );
    Ok(())
}

#[test]
fn resumes_bit_for_bit_with_the_adjoint() -> Result<()> {
    let args = [
        "--iters",
        "30",
        "--checkpoint-every",
        "10",
        "--gradient",
        "adjoint",
    ];
    let whole = tmp("whole");
    ok(&fit(whole.path(), &args));
    assert!(metric(whole.path(), "rmse")[2] < metric(whole.path(), "rmse")[0]);
    let pieces = tmp("pieces");
    resumes_like_one_run(fit, &args, 10, whole.path(), pieces.path(), "rmse");
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&fit(out.path(), &["--iters", "2"]));
    // Other segments, other start states.
    let o = fit(
        out.path(),
        &["--iters", "4", "--resume", "--intervals", "10"],
    );
    fails_saying(&o, "does not fit this model");
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_fit-robertson"),
        out.path(),
        "lotka-volterra",
        "robertson",
    );
    let fresh = tmp("bad");
    for (bad, says) in [
        (&["--iters", "0"][..], "must be positive"),
        (&["--intervals", "0"], "must be positive"),
        (&["--observations", "1"], "at least 2"),
        (&["--continuity=-1"], "--continuity must be"),
        (&["--noise", "nan"], "--noise must be"),
        (&["--guess", "1,-2,1,1"], "must be positive"),
        (&["--guess", "1,1,1"], "needs 4 factors"),
        (&["--t-end", "0"], "must be positive"),
        (&["--model", "neural", "--width", "0"], "must be positive"),
        (&["--independent", "--sequential"], "not with --sequential"),
        (
            &["--independent", "--gradient", "checkpoint"],
            "--gradient adjoint or backprop",
        ),
    ] {
        fails_saying(&fit(fresh.path(), bad), says);
    }
    // A learning rate that throws the rates out of range: the solver's typed error, with
    // the iteration and a hint.
    fails_saying(
        &fit(fresh.path(), &["--lr", "5", "--iters", "50"]),
        "lower --lr",
    );
    Ok(())
}
