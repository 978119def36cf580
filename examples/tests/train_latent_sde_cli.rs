//! The latent SDE's training binary end to end: it learns, it resumes exactly, it trains by
//! backprop and on the irregular sine, and it refuses what is not its checkpoint and bad
//! options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-latent-sde-cli", name)
}

/// A small, fast model (a drift network of width 16, 32 samples, steps of 0.05: the test
/// build is unoptimized), each setting replaced where `extra` gives its flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--hidden", "16"],
        ["--batch-size", "32"],
        ["--dt", "0.05"],
        ["--kl-anneal-iters", "10"],
    ];
    run_with_defaults(
        env!("CARGO_BIN_EXE_train-latent-sde"),
        out,
        &defaults,
        extra,
    )
}

#[test]
fn learns_and_resumes_bit_for_bit() -> Result<()> {
    // One run of 30 iterations, and one stopped at 10 and at 20 and resumed each time.
    let whole = tmp("whole");
    let args = ["--iters", "30", "--checkpoint-every", "10"];
    let o = train(whole.path(), &args);
    ok(&o);
    let logpy = metric(whole.path(), "logpy");
    assert_eq!(logpy.len(), 3);
    assert!(logpy[2] > logpy[0], "the likelihood rises: {logpy:?}");
    // Forward: 40 midpoint steps (0.05 over [0, 2], cut at the observations), two drift
    // evaluations each; backward as many for the adjoint.
    assert!(metric(whole.path(), "nfe_b")[0] > 0.0);
    assert_eq!(metric(whole.path(), "nfe_f"), metric(whole.path(), "nfe_b"));
    assert!(whole.path().join("posterior.png").exists());
    let coverage: f64 = summary_field(whole.path(), "coverage_90").parse()?;
    assert!((0.0..=1.0).contains(&coverage));
    assert!(String::from_utf8_lossy(&o.stdout).contains("posterior of 1024 samples"));

    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 10, whole.path(), pieces.path(), "loss");
    Ok(())
}

#[test]
fn trains_by_backprop_on_the_irregular_sine() -> Result<()> {
    let out = tmp("backprop");
    let o = train(
        out.path(),
        &[
            "--iters",
            "4",
            "--gradient",
            "backprop",
            "--data",
            "irregular-sine",
            "--method",
            "euler-maruyama",
        ],
    );
    ok(&o);
    assert_eq!(summary_field(out.path(), "gradient"), "\"Backprop\"");
    assert_eq!(metric(out.path(), "nfe_b"), [0.0]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("observations of IrregularSine"));
    Ok(())
}

#[test]
fn trains_with_adaptive_steps() -> Result<()> {
    let out = tmp("adaptive");
    let o = train(
        out.path(),
        &[
            "--iters",
            "3",
            "--adaptive",
            "--rtol",
            "1e-2",
            "--atol",
            "1e-2",
        ],
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("adaptive steps (rtol 0.01, atol 0.01, Doubling error estimate)"));
    assert_eq!(summary_field(out.path(), "adaptive"), "true");
    assert!(metric(out.path(), "nfe_b")[0] > 0.0);
    let embedded = tmp("embedded");
    let o = train(
        embedded.path(),
        &["--iters", "2", "--adaptive", "--error-estimate", "embedded"],
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Embedded error estimate"));
    // ShARK, adaptive with its embedded estimate, the adjoint's reverse step finer.
    let shark = tmp("shark");
    let o = train(
        shark.path(),
        &[
            "--iters",
            "2",
            "--method",
            "shark",
            "--adaptive",
            "--error-estimate",
            "embedded",
            "--adjoint-dt",
            "0.02",
        ],
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("per iteration, shark with adaptive steps"));
    assert!(metric(shark.path(), "nfe_b")[0] > 0.0);
    // Tolerances are checked before training.
    let o = train(out.path(), &["--iters", "3", "--adaptive", "--rtol", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("rtol"));
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    let o = train(out.path(), &["--iters", "4", "--resume", "--hidden", "8"]);
    fails_saying(&o, "does not fit this model");
    // The neural CDE's trainer refuses this checkpoint by its model name.
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-cde"),
        out.path(),
        "latent-sde",
        "neural-cde",
    );
    // The adjoint needs a Stratonovich method.
    let bad = tmp("bad");
    let o = train(bad.path(), &["--iters", "2", "--method", "euler-maruyama"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Stratonovich"));
    for flags in [
        ["--dt", "0"],
        ["--iters", "0"],
        ["--scale", "-1"],
        ["--method", "dopri5"],
        ["--adjoint-dt", "-0.1"],
    ] {
        let o = train(bad.path(), &flags);
        assert!(!o.status.success(), "{flags:?} accepted");
    }
    // The adjoint's step without the adjoint.
    let o = train(
        bad.path(),
        &[
            "--iters",
            "2",
            "--gradient",
            "backprop",
            "--adjoint-dt",
            "0.01",
        ],
    );
    fails_saying(&o, "--adjoint-dt");
    Ok(())
}
