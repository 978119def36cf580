//! The neural CDE's training binary end to end: it learns, it resumes exactly, it trains on
//! irregularly sampled spirals, and it refuses what is not its checkpoint and bad options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-cde-cli", name)
}

/// A small, fast model (32 spirals of 25 points, a field of width 32, one RK4 step per
/// interval: the test build is unoptimized), each setting replaced where `extra` gives its
/// flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--train-size", "32"],
        ["--test-size", "32"],
        ["--length", "25"],
        ["--width", "32"],
        ["--batch-size", "16"],
        ["--method", "rk4"],
    ];
    run_with_defaults(env!("CARGO_BIN_EXE_train-cde"), out, &defaults, extra)
}

#[test]
fn learns_and_resumes_bit_for_bit() -> Result<()> {
    // One run of 30 iterations, and one stopped at 10 and at 20 and resumed each time.
    let whole = tmp("whole");
    let args = ["--iters", "30", "--checkpoint-every", "10"];
    let o = train(whole.path(), &args);
    ok(&o);
    let loss = metric(whole.path(), "loss");
    assert_eq!(loss.len(), 3);
    assert!(loss[2] < 0.5 * loss[0], "the loss falls: {loss:?}");
    let acc: f64 = summary_field(whole.path(), "test_accuracy").parse()?;
    assert!(acc >= 0.9, "held-out accuracy {acc}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("held-out spirals: loss"));

    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 10, whole.path(), pieces.path(), "loss");
    Ok(())
}

#[test]
fn trains_on_irregular_samples_with_every_path() -> Result<()> {
    // A third of each spiral's points dropped and filled in; an adaptive solve (dopri5) on
    // linear and natural paths.
    for kind in ["linear", "natural"] {
        let out = tmp(kind);
        let o = train(
            out.path(),
            &[
                "--iters",
                "4",
                "--missing",
                "0.33",
                "--interpolation",
                kind,
                "--method",
                "dopri5",
                "--gradient",
                "backprop",
            ],
        );
        ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("33% of the points dropped"),
            "{kind}"
        );
        assert_eq!(
            summary_field(out.path(), "interpolation"),
            format!("\"{kind}\"")
        );
        assert!(metric(out.path(), "nfe_f")[0] > 0.0);
    }
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    let o = train(out.path(), &["--iters", "4", "--resume", "--hidden", "5"]);
    fails_saying(&o, "does not fit this model");
    // The latent ODE's trainer refuses this checkpoint by its model name.
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-latent-ode"),
        out.path(),
        "neural-cde",
        "latent-ode",
    );
    for (bad, says) in [
        (&["--iters", "0"][..], "must be positive"),
        (&["--batch-size", "64"], "more than the 32 training spirals"),
        (&["--missing", "1"], "missing in [0, 1)"),
        (&["--length", "1"], "length ≥ 2"),
        (&["--hidden", "0"], "at least 1"),
        (&["--lr", "nan"], "must be positive numbers"),
    ] {
        fails_saying(&train(out.path(), bad), says);
    }
    Ok(())
}
