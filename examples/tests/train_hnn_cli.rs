//! The HNN's training binary end to end: the HNN keeps the true energy far better than the
//! baseline on held-out rollouts, a run resumes bit for bit, the separable model rolls out
//! by leapfrog and learns from rollouts of the states alone, and other checkpoints and bad
//! options are refused.

mod common;

use anyhow::Result;
use common::{
    fails_saying, metric, ok, other_trainer_refuses, resumes_like_one_run, run_with_defaults,
    summary_field, tensors,
};
use std::path::Path;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-hnn-cli", name)
}

/// A small, fast setting (width 32, 10 trajectories, rollouts over [0, 10]: the test build
/// is unoptimized), each setting replaced where `extra` gives its flag.
fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let defaults = [
        ["--device", "cpu"],
        ["--width", "32"],
        ["--trajectories", "10"],
        ["--horizon", "10"],
        ["--rollout-points", "50"],
        ["--lr", "1e-2"],
    ];
    run_with_defaults(env!("CARGO_BIN_EXE_train-hnn"), out, &defaults, extra)
}

fn number(out: &Path, key: &str) -> Result<f64> {
    Ok(summary_field(out, key).parse()?)
}

#[test]
fn hnn_keeps_the_energy_and_resumes_bit_for_bit() -> Result<()> {
    let args = ["--iters", "300", "--checkpoint-every", "100"];
    let hnn = tmp("hnn");
    ok(&train(hnn.path(), &args));
    let baseline = tmp("baseline");
    ok(&train(
        baseline.path(),
        &[&args[..], &["--model", "baseline"]].concat(),
    ));
    // The noise (σ = 0.1 on the states, the derivatives taken at the clean ones) puts a
    // floor of 4σ² = 0.04 under the derivative MSE of the spring's `dx/dt = (2p, −2q)`.
    for out in [hnn.path(), baseline.path()] {
        let loss = metric(out, "loss");
        assert!(
            loss[2] < loss[1] && loss[1] < loss[0],
            "the loss falls: {loss:?}"
        );
        let test = number(out, "test_mse")?;
        assert!(test < 0.06, "held-out derivative MSE {test}");
    }
    let (e_hnn, e_base) = (
        number(hnn.path(), "rollout_energy_mse")?,
        number(baseline.path(), "rollout_energy_mse")?,
    );
    assert!(
        e_hnn < 0.2 * e_base,
        "true-energy MSE of the rollouts: HNN {e_hnn:e}, baseline {e_base:e}"
    );
    assert_eq!(
        summary_field(baseline.path(), "learned_energy_drift"),
        "null"
    );
    assert!(hnn.path().join("rollouts.png").exists());

    // Stopped at 100 and 200 and resumed: the same as one run.
    let pieces = tmp("pieces");
    resumes_like_one_run(train, &args, 100, hnn.path(), pieces.path(), "loss");
    assert_eq!(
        summary_field(hnn.path(), "rollout_energy_mse"),
        summary_field(pieces.path(), "rollout_energy_mse")
    );
    Ok(())
}

#[test]
fn separable_pendulum_rolls_out_by_leapfrog() -> Result<()> {
    let out = tmp("separable");
    let o = train(
        out.path(),
        &[
            "--iters",
            "20",
            "--system",
            "pendulum",
            "--model",
            "separable",
            "--checkpoint-every",
            "10",
        ],
    );
    ok(&o);
    assert_eq!(summary_field(out.path(), "kind"), "\"separable\"");
    assert_eq!(summary_field(out.path(), "system"), "\"pendulum\"");
    // Leapfrog keeps the learned energy to O(h²) (h = 0.01).
    assert!(number(out.path(), "learned_energy_drift")? < 1e-2);
    Ok(())
}

/// `--loss rollout`: fitted to the noisy states alone, by leapfrog rollouts whose gradients
/// walk the steps back, the separable model keeps the energy far better than the baseline
/// fitted the same way (RK4 rollouts); the learned initial states are checkpointed, so the
/// run resumes bit for bit; a checkpoint of the derivative loss does not fit.
#[test]
fn separable_learns_from_rollouts_and_resumes() -> Result<()> {
    let args = [
        "--iters",
        "100",
        "--checkpoint-every",
        "50",
        "--loss",
        "rollout",
    ];
    let separable = tmp("rollout-separable");
    ok(&train(
        separable.path(),
        &[&args[..], &["--model", "separable"]].concat(),
    ));
    let baseline = tmp("rollout-baseline");
    ok(&train(
        baseline.path(),
        &[&args[..], &["--model", "baseline"]].concat(),
    ));
    for out in [separable.path(), baseline.path()] {
        assert_eq!(summary_field(out, "loss"), "\"rollout\"");
        let loss = metric(out, "loss");
        assert!(loss[1] < loss[0], "the loss falls: {loss:?}");
    }
    let (e_sep, e_base) = (
        number(separable.path(), "rollout_energy_mse")?,
        number(baseline.path(), "rollout_energy_mse")?,
    );
    // 5.7e-5 and 2.2e-2 when written.
    assert!(
        e_sep < 0.2 * e_base,
        "true-energy MSE of the rollouts: separable {e_sep:e}, baseline {e_base:e}"
    );
    assert!(
        tensors(&separable.path().join("checkpoint.safetensors"))
            .iter()
            .any(|(name, _)| name.contains("initial_states")),
        "the initial states are checkpointed"
    );

    let pieces = tmp("rollout-pieces");
    let args = [&args[..], &["--model", "separable"]].concat();
    ok(&train(
        pieces.path(),
        &[&args[..], &["--stop-after-steps", "50"]].concat(),
    ));
    ok(&train(pieces.path(), &[&args[..], &["--resume"]].concat()));
    assert_eq!(
        tensors(&separable.path().join("checkpoint.safetensors")),
        tensors(&pieces.path().join("checkpoint.safetensors")),
        "weights, initial states, Adam's state, RNG: the same as one run"
    );

    // A checkpoint of the derivative loss has no initial states.
    let derivative = tmp("derivative-then-rollout");
    ok(&train(
        derivative.path(),
        &["--iters", "2", "--model", "separable"],
    ));
    let o = train(
        derivative.path(),
        &[
            "--iters",
            "4",
            "--resume",
            "--loss",
            "rollout",
            "--model",
            "separable",
        ],
    );
    fails_saying(&o, "does not fit this model");
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2"]));
    let o = train(out.path(), &["--iters", "4", "--resume", "--width", "16"]);
    fails_saying(&o, "does not fit this model");
    other_trainer_refuses(
        env!("CARGO_BIN_EXE_train-cde"),
        out.path(),
        "hnn",
        "neural-cde",
    );
    for (bad, says) in [
        (&["--iters", "0"][..], "must be positive"),
        (&["--trajectories", "1"], "at least 2"),
        (&["--noise=-1"], "not negative"),
        (&["--horizon", "nan"], "must be positive"),
        (&["--width", "0"], "positive dof, width and depth"),
        (&["--rollout-substeps", "0"], "must be positive"),
    ] {
        fails_saying(&train(out.path(), bad), says);
    }
    Ok(())
}
