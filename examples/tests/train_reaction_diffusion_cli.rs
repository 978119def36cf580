//! The reaction–diffusion trainer end to end: it learns with an IMEX solve, it resumes
//! exactly, and it refuses what is not its checkpoint, bad options and backprop through an
//! implicit solve; on a 2-D grid it learns with rkc, resumes exactly, refuses the implicit
//! methods and a 1-D checkpoint.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-reaction-diffusion-cli", name)
}

/// A small, fast problem (8 trajectories on 16 points, 5 snapshots, a network of width 16:
/// the test build is unoptimized), each setting replaced where `extra` gives its flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--points", "16"],
        ["--train-size", "8"],
        ["--test-size", "4"],
        ["--batch-size", "4"],
        ["--observations", "5"],
        ["--width", "16"],
        ["--lr", "0.02"],
    ];
    run_with_defaults(
        env!("CARGO_BIN_EXE_train-reaction-diffusion"),
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
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("kencarp4 (reaction explicit, diffusion implicit)"),
        "{stdout}"
    );
    let loss = metric(whole.path(), "loss");
    assert_eq!(loss.len(), 3);
    assert!(loss[2] < 0.5 * loss[0], "the loss falls: {loss:?}");
    // The forward solve is split: the network is evaluated explicitly.
    assert!(metric(whole.path(), "nfe_explicit_f")[0] > 0.0);
    let learned: f64 = summary_field(whole.path(), "test_rmse").parse()?;
    let baseline: f64 = summary_field(whole.path(), "diffusion_only_rmse").parse()?;
    assert!(
        learned < baseline,
        "held-out rollouts: {learned} against the diffusion alone's {baseline}"
    );

    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 10, whole.path(), pieces.path(), "loss");
    Ok(())
}

#[test]
fn an_explicit_method_trains_by_backprop() -> Result<()> {
    // dopri5 solves the sum, differentiated by backprop: the metrics still count the
    // network's evaluations (a split field's explicit part, in the sum).
    let out = tmp("dopri5");
    let o = train(
        out.path(),
        &[
            "--iters",
            "2",
            "--method",
            "dopri5",
            "--gradient",
            "backprop",
        ],
    );
    ok(&o);
    let nfe = metric(out.path(), "nfe_f");
    assert_eq!(metric(out.path(), "nfe_explicit_f"), nfe);
    assert!(nfe[0] > 0.0);
    Ok(())
}

#[test]
fn learns_on_a_square_with_rkc() -> Result<()> {
    // A 6 × 6 grid: rkc by default, the interpolated adjoint; 20 iterations in one run and
    // in two, the same losses.
    let whole = tmp("square");
    let args = [
        "--dims",
        "2",
        "--points",
        "6",
        "--iters",
        "20",
        "--checkpoint-every",
        "10",
    ];
    let o = train(whole.path(), &args);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("a 6 × 6 grid") && stdout.contains("; rkc, Interpolated gradients"),
        "{stdout}"
    );
    assert_eq!(
        summary_field(whole.path(), "model"),
        "\"reaction-diffusion-2d\""
    );
    let loss = metric(whole.path(), "loss");
    // Means over iterations 1–10 and 11–20: 0.174 and 0.094 (measured).
    assert!(loss[1] < 0.7 * loss[0], "the loss falls: {loss:?}");
    let learned: f64 = summary_field(whole.path(), "test_rmse").parse()?;
    let baseline: f64 = summary_field(whole.path(), "diffusion_only_rmse").parse()?;
    assert!(learned < baseline, "{learned} against {baseline}");
    let pieces = tmp("square-pieces");
    resumes_like_one_run(train, &args, 10, whole.path(), pieces.path(), "loss");
    // The implicit methods are refused on a square, with what to use; a 1-D checkpoint is
    // not a 2-D one's; a third dimension is not offered.
    let square = ["--dims", "2", "--points", "6", "--iters", "1"];
    let o = train(
        whole.path(),
        &[&square[..], &["--method", "kencarp4"]].concat(),
    );
    fails_saying(&o, "use rkc");
    let line = tmp("line");
    ok(&train(line.path(), &["--iters", "1"]));
    let resume = ["--dims", "2", "--points", "6", "--iters", "2", "--resume"];
    let o = train(line.path(), &resume);
    fails_saying(
        &o,
        "checkpoint of model `reaction-diffusion`, not `reaction-diffusion-2d`",
    );
    fails_saying(&train(line.path(), &["--dims", "3"]), "--dims");
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    let o = train(out.path(), &["--iters", "4", "--resume", "--width", "8"]);
    fails_saying(&o, "does not fit this model");
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-cde"),
        out.path(),
        "reaction-diffusion",
        "neural-cde",
    );
    let fresh = tmp("bad");
    for (bad, says) in [
        (&["--iters", "0"][..], "must be positive"),
        (
            &["--batch-size", "16"],
            "more than the 8 training trajectories",
        ),
        (&["--points", "1"], "at least 2"),
        (&["--alpha=-1"], "must be positive"),
        (&["--noise", "nan"], "--noise non-negative"),
        // Backprop cannot run through Newton's host iterations: refused with what to use.
        (
            &["--gradient", "backprop", "--iters", "1"],
            "use --gradient interpolated or adjoint",
        ),
    ] {
        fails_saying(&train(fresh.path(), bad), says);
    }
    Ok(())
}
