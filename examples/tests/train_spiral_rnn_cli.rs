//! The RNN baseline's training binary end to end: it learns, it resumes exactly, it scores
//! its forecast on test spirals, it refuses what is not its checkpoint and bad options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, run_with_defaults, summary_field, tensors,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-spiral-rnn-cli", name)
}

/// A small, fast model (64 spirals of 20 points), each setting replaced where `extra` gives
/// its flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--nspiral", "64"],
        ["--ntotal", "100"],
        ["--nsample", "20"],
        ["--hidden", "8"],
    ];
    run_with_defaults(
        env!("CARGO_BIN_EXE_train-spiral-rnn"),
        out,
        &defaults,
        extra,
    )
}

fn summary(out: &Path) -> String {
    std::fs::read_to_string(out.join("summary.json")).expect("a summary")
}

#[test]
fn learns_and_resumes_bit_for_bit() -> Result<()> {
    let whole = tmp("whole");
    let args = ["--iters", "60", "--checkpoint-every", "20", "--time-input"];
    ok(&train(whole.path(), &args));
    let loss = metric(whole.path(), "loss");
    assert_eq!(loss.len(), 3);
    assert!(loss[2] < 0.5 * loss[0], "the loss falls: {loss:?}");

    let pieces = tmp("pieces");
    let o = train(
        pieces.path(),
        &[&args[..], &["--stop-after-steps", "25"]].concat(),
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("stopped after iteration 25"));
    let o = train(pieces.path(), &[&args[..], &["--resume"]].concat());
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("resumed from"));
    assert_eq!(
        tensors(&whole.path().join("checkpoint.safetensors")),
        tensors(&pieces.path().join("checkpoint.safetensors")),
        "weights, Adam's moments and step count: the same as one run"
    );
    assert_eq!(summary(whole.path()), summary(pieces.path()));
    Ok(())
}

#[test]
fn scores_the_forecast_on_test_spirals() -> Result<()> {
    // 8 of 20 points observed, 10 grid points forecast on 16 fresh spirals.
    let out = tmp("forecast");
    let o = train(
        out.path(),
        &[
            "--iters",
            "10",
            "--observed",
            "8",
            "--forecast",
            "10",
            "--test-spirals",
            "16",
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("RMSE to the clean test spirals of the forecast over the 10 points"),
        "{stdout}"
    );
    assert_eq!(summary_field(out.path(), "observed"), "8");
    assert_eq!(summary_field(out.path(), "scored"), "\"test\"");
    let rmse: f64 = summary_field(out.path(), "rmse_forecast").parse()?;
    assert!(rmse.is_finite() && rmse > 0.0, "{rmse}");
    // Without --forecast there is nothing to score.
    let o = train(tmp("none").path(), &["--iters", "2"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no --forecast"));
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    // The gap input widens the first layer: the checkpoint does not fit.
    let o = train(out.path(), &["--iters", "4", "--resume", "--time-input"]);
    fails_saying(&o, "does not fit this model");
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-latent-ode"),
        out.path(),
        "spiral-rnn",
        "latent-ode",
    );
    for (bad, says) in [
        (&["--iters", "0"][..], "--iters"),
        (&["--hidden", "0"], "--hidden"),
        (&["--lr", "0"], "--lr"),
        (&["--noise", "0"], "--noise"),
        (&["--observed", "21"], "--observed must be in 1..=20"),
        (&["--forecast", "40"], "--ntotal (100) must exceed"),
        (&["--nspiral", "0"], "--nspiral"),
    ] {
        fails_saying(&train(out.path(), bad), says);
    }
    Ok(())
}
