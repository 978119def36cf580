//! The equilibrium trainer end to end: it learns with the implicit gradients and with
//! backprop, runs with implicit methods, resumes exactly, and refuses what is not its
//! checkpoint and bad options.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field,
};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-equilibrium-cli", name)
}

/// A small, fast problem (200 points, width 16: the test build is unoptimized), each
/// setting replaced where `extra` gives its flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--train-size", "200"],
        ["--test-size", "200"],
        ["--batch-size", "64"],
        ["--width", "16"],
        ["--lr", "0.03"],
        ["--turns", "0.5"],
    ];
    run_with_defaults(
        env!("CARGO_BIN_EXE_train-equilibrium"),
        out,
        &defaults,
        extra,
    )
}

#[test]
fn learns_and_resumes_bit_for_bit() -> Result<()> {
    // One run of 60 iterations, and one stopped at 20 and at 40 and resumed each time.
    let whole = tmp("whole");
    let args = ["--iters", "60", "--checkpoint-every", "20"];
    let o = train(whole.path(), &args);
    ok(&o);
    let loss = metric(whole.path(), "loss");
    assert_eq!(loss.len(), 3);
    assert!(loss[2] < 0.7 * loss[0], "the loss falls: {loss:?}");
    // The backward pass is a steady-state solve of its own.
    assert!(metric(whole.path(), "nfe_b")[0] > 0.0);
    let accuracy: f64 = summary_field(whole.path(), "test_accuracy").parse()?;
    assert!(accuracy > 0.8, "held-out accuracy {accuracy}");

    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 20, whole.path(), pieces.path(), "loss");
    Ok(())
}

#[test]
fn backprop_through_a_fixed_solve_learns_too() -> Result<()> {
    let out = tmp("backprop");
    let o = train(
        out.path(),
        &[
            "--iters",
            "60",
            "--checkpoint-every",
            "20",
            "--gradient",
            "backprop",
        ],
    );
    ok(&o);
    let loss = metric(out.path(), "loss");
    assert!(loss[2] < 0.7 * loss[0], "the loss falls: {loss:?}");
    assert_eq!(metric(out.path(), "nfe_b"), vec![0.0; 3]);
    Ok(())
}

#[test]
fn implicit_methods_find_the_steady_states_too() -> Result<()> {
    // Batched Jacobians (one per point) in the forward steady state and the adjoint's.
    for method in ["kvaerno5", "rodas5p"] {
        let out = tmp(method);
        let o = train(
            out.path(),
            &[
                "--iters",
                "2",
                "--checkpoint-every",
                "2",
                "--method",
                method,
            ],
        );
        ok(&o);
        assert!(metric(out.path(), "nfe_b")[0] > 0.0, "{method}");
    }
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
        "equilibrium",
        "neural-cde",
    );
    let fresh = tmp("bad");
    for (bad, says) in [
        (&["--iters", "0"][..], "must be positive"),
        (&["--batch-size", "300"], "must be at most --train-size 200"),
        (&["--t-max=-1"], "must be positive"),
        (&["--noise", "nan"], "--noise non-negative"),
        // The dynamics cannot come to rest by a t_max this short.
        (
            &["--t-max", "0.01", "--iters", "1"],
            "no longer come to rest",
        ),
    ] {
        fails_saying(&train(fresh.path(), bad), says);
    }
    Ok(())
}
