//! The SDE-GAN's training binary end to end: it trains, averages and evaluates, it resumes
//! exactly (the averaged models included), it trains by backprop, and it refuses what is
//! not its checkpoint and bad options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-sde-gan-cli", name)
}

/// A small, fast run (the test build is unoptimized): 256 paths of 16 times, batch 32,
/// each setting replaced where `extra` gives its flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--dataset-size", "256"],
        ["--t-size", "16"],
        ["--batch-size", "32"],
        ["--eval-size", "128"],
        ["--swa-start", "10"],
    ];
    run_with_defaults(env!("CARGO_BIN_EXE_train-sde-gan"), out, &defaults, extra)
}

#[test]
fn trains_and_resumes_bit_for_bit() -> Result<()> {
    // One run of 24 iterations, and one stopped at 8 and at 16 and resumed each time; the
    // weights are averaged from iteration 10 on, across a resume.
    let whole = tmp("whole");
    let args = ["--iters", "24", "--checkpoint-every", "8"];
    let o = train(whole.path(), &args);
    ok(&o);
    assert_eq!(metric(whole.path(), "loss").len(), 3);
    // Reversible Heun over 15 unit steps: one drift evaluation each and one at the start.
    assert_eq!(metric(whole.path(), "nfe_f"), [16.0; 3]);
    assert!(whole.path().join("samples.png").exists());
    assert_eq!(summary_field(whole.path(), "averaged"), "true");
    // The untrained generator is far from the data; training moves it closer.
    let w1: f64 = summary_field(whole.path(), "w1").parse()?;
    let untrained: f64 = summary_field(whole.path(), "w1_untrained").parse()?;
    let floor: f64 = summary_field(whole.path(), "w1_floor").parse()?;
    assert!(floor < w1 && w1 < untrained, "{floor} < {w1} < {untrained}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("averaged generator"));

    // The checkpoint holds the averaged weights too.
    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 8, whole.path(), pieces.path(), "loss");
    assert_eq!(
        summary_field(whole.path(), "w1"),
        summary_field(pieces.path(), "w1")
    );
    Ok(())
}

#[test]
fn trains_by_backprop_without_averaging() -> Result<()> {
    // With GeneralShARK, on a tree with Lévy area, at half steps.
    let out = tmp("backprop");
    let o = train(
        out.path(),
        &[
            "--iters",
            "3",
            "--gradient",
            "backprop",
            "--swa-start",
            "3",
            "--method",
            "general_shark",
            "--dt",
            "0.5",
        ],
    );
    ok(&o);
    assert_eq!(summary_field(out.path(), "gradient"), "\"Backprop\"");
    assert_eq!(summary_field(out.path(), "method"), "\"general_shark\"");
    assert_eq!(summary_field(out.path(), "dt").parse::<f64>()?, 0.5);
    assert_eq!(summary_field(out.path(), "averaged"), "false");
    assert!(String::from_utf8_lossy(&o.stdout).contains("trained generator"));
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    let o = train(out.path(), &["--iters", "4", "--resume", "--hidden", "8"]);
    fails_saying(&o, "does not fit this model");
    // The latent SDE's trainer refuses this checkpoint by its model name.
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-latent-sde"),
        out.path(),
        "sde-gan",
        "latent-sde",
    );
    let bad = tmp("bad");
    for flags in [
        &["--iters", "0"][..],
        &["--generator-lr", "0"],
        &["--weight-decay", "-1"],
        &["--drop", "1"],
        &["--t-size", "1"],
        &["--hidden", "0"],
        &["--batch-size", "512"],
        &["--dt", "0"],
        &["--method", "dopri5"],
        // The adjoint needs a Stratonovich method; ShARK needs additive noise.
        &["--method", "euler_maruyama"],
        &["--method", "shark", "--gradient", "backprop"],
    ] {
        let o = train(bad.path(), flags);
        assert!(!o.status.success(), "{flags:?} accepted");
    }
    Ok(())
}
