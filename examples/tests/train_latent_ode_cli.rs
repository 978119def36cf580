//! The latent ODE's training binary end to end: it learns, it resumes exactly, it refuses
//! what is not its checkpoint and bad options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-latent-ode-cli", name)
}

/// A small, fast model (64 spirals of 20 points, loose tolerances), each setting replaced
/// where `extra` gives its flag; no picture unless `extra` holds `--plot` (not passed on).
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--nspiral", "64"],
        ["--ntotal", "100"],
        ["--nsample", "20"],
        ["--hidden", "8"],
        ["--rnn-hidden", "8"],
        ["--rtol", "1e-4"],
        ["--atol", "1e-5"],
    ];
    let mut args: Vec<&str> = extra.iter().copied().filter(|a| *a != "--plot").collect();
    if !extra.contains(&"--plot") {
        args.push("--no-plot");
    }
    run_with_defaults(
        env!("CARGO_BIN_EXE_train-latent-ode"),
        out,
        &defaults,
        &args,
    )
}

#[test]
fn learns_and_resumes_bit_for_bit() -> Result<()> {
    // One run of 30 iterations, and one stopped at 10 and at 20 and resumed each time.
    let whole = tmp("whole");
    let args = ["--iters", "30", "--checkpoint-every", "10"];
    ok(&train(whole.path(), &args));
    let loss = metric(whole.path(), "loss");
    assert_eq!(loss.len(), 3);
    assert!(loss[2] < 0.8 * loss[0], "the loss falls: {loss:?}");

    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 10, whole.path(), pieces.path(), "loss");
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    let o = train(out.path(), &["--iters", "4", "--resume", "--latent", "5"]);
    fails_saying(&o, "does not fit this model");
    // The flow's trainer refuses this checkpoint by its model name.
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-cnf"),
        out.path(),
        "latent-ode",
        "cnf",
    );
    for bad in [
        &["--iters", "0"][..],
        &["--noise", "0"],
        &["--nsample", "60"],
        &["--latent", "0"],
    ] {
        let o = train(out.path(), bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }
    fails_saying(
        &train(out.path(), &["--method", "rk4"]),
        "needs an adaptive method",
    );
    Ok(())
}

#[test]
fn trains_with_the_adams_method() -> Result<()> {
    // The decoder by `adams` (variable-step, variable-order), gradients by the adjoint,
    // whose reverse solve is an Adams solve too.
    let out = tmp("adams");
    let args = [
        "--iters",
        "4",
        "--checkpoint-every",
        "2",
        "--method",
        "adams",
    ];
    ok(&train(
        out.path(),
        &[&args[..], &["--gradient", "adjoint"]].concat(),
    ));
    assert_eq!(summary_field(out.path(), "method"), "\"adams\"");
    let loss = metric(out.path(), "loss");
    assert!(loss.iter().all(|l| l.is_finite()), "{loss:?}");
    Ok(())
}

#[test]
fn draws_the_spiral() -> Result<()> {
    let out = tmp("plot");
    let o = train(out.path(), &["--iters", "3", "--plot"]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("mean distance to the clean spiral"),
        "{stdout}"
    );
    assert!(
        stdout.contains("RMSE to the clean training spirals"),
        "{stdout}"
    );
    assert!(out.path().join("spiral.png").exists());
    Ok(())
}

#[test]
fn trains_on_irregular_observations() -> Result<()> {
    // 8 random points of 20 observed, their gaps read by the encoder; the held-out points are
    // scored at the end.
    let out = tmp("irregular");
    let o = train(
        out.path(),
        &[
            "--iters",
            "20",
            "--checkpoint-every",
            "5",
            "--observed",
            "8",
            "--time-input",
            "--plot",
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("at the held-out ones"), "{stdout}");
    let loss = metric(out.path(), "loss");
    assert!(loss[loss.len() - 1] < 0.8 * loss[0], "{loss:?}");
    for bad in ["0", "21"] {
        let o = train(out.path(), &["--iters", "2", "--observed", bad]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--observed must be in 1..=20"));
    }
    Ok(())
}

#[test]
fn scores_the_forecast_on_test_spirals() -> Result<()> {
    // 8 of 20 points observed, 10 grid points forecast on 16 fresh spirals; observing every
    // point holds none out.
    let out = tmp("forecast");
    let args = ["--iters", "5", "--forecast", "10", "--test-spirals", "16"];
    let o = train(out.path(), &[&args[..], &["--observed", "8"]].concat());
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("RMSE to the clean test spirals")
            && stdout.contains("at the held-out ones")
            && stdout.contains("over the 10 points after the window"),
        "{stdout}"
    );
    for key in ["rmse_observed", "rmse_held_out", "rmse_forecast"] {
        let v: f64 = summary_field(out.path(), key).parse()?;
        assert!(v.is_finite() && v > 0.0, "{key} {v}");
    }
    let all = tmp("all");
    ok(&train(
        all.path(),
        &[&args[..], &["--observed", "20"]].concat(),
    ));
    assert_eq!(summary_field(all.path(), "rmse_held_out"), "null");
    assert_eq!(summary_field(all.path(), "observed"), "20");
    let o = train(out.path(), &["--iters", "2", "--forecast", "40"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ntotal (100) must exceed"));
    Ok(())
}

#[test]
fn trains_with_an_ode_rnn_encoder() -> Result<()> {
    // Irregular observations read by an ODE-RNN: it learns, it counts its solves (20 points,
    // 50 steps over the window: 3 Euler steps per interval, 19 intervals), and a checkpoint
    // of one encoder does not resume the other.
    let out = tmp("ode-rnn");
    let args = [
        "--iters",
        "20",
        "--checkpoint-every",
        "5",
        "--observed",
        "8",
        "--encoder",
        "ode-rnn",
        "--gradient",
        "adjoint",
    ];
    ok(&train(out.path(), &args));
    let loss = metric(out.path(), "loss");
    assert!(loss[loss.len() - 1] < 0.8 * loss[0], "{loss:?}");
    assert!(metric(out.path(), "nfe_enc_f").iter().all(|&n| n == 57.0));
    assert!(metric(out.path(), "nfe_enc_b").iter().all(|&n| n == 57.0));
    assert_eq!(summary_field(out.path(), "encoder"), "\"ode-rnn/50\"");
    let o = train(out.path(), &["--iters", "25", "--resume"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not in this model"), "{err}");
    let o = train(out.path(), &["--iters", "2", "--encoder-steps", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--encoder-steps must be positive"));
    Ok(())
}
