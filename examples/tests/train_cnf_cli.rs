//! The flows' training binary end to end: it learns, it resumes exactly, it refuses what is
//! not its checkpoint and bad options; the paper's flow and FFJORD.

mod common;

use anyhow::Result;
use common::{fails_saying, metric, ok, resumes_like_one_run, run_with_defaults, tensors};
use std::path::Path;
use std::process::Output;

fn tmp(name: &str) -> tempfile::TempDir {
    common::tmp("train-cnf-cli", name)
}

/// A small, fast flow (width 8, batch 64, loose tolerances, 256 test points, no picture), each
/// setting replaced where `extra` gives its flag.
fn train(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--device", "cpu"],
        ["--width", "8"],
        ["--hidden", "8"],
        ["--batch-size", "64"],
        ["--tol", "1e-3"],
        ["--lr", "1e-2"],
        ["--test-points", "256"],
        ["--image-size", "0"],
    ];
    run_with_defaults(env!("CARGO_BIN_EXE_train-cnf"), out, &defaults, extra)
}

#[test]
fn learns_and_resumes_bit_for_bit() -> Result<()> {
    // One run of 30 iterations, and one stopped at 10 and at 20 and resumed each time.
    let whole = tmp("whole");
    let o = train(
        whole.path(),
        &[
            "--iters",
            "30",
            "--checkpoint-every",
            "10",
            "--image-size",
            "16",
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("test NLL on 256 held-out points"),
        "{stdout}"
    );
    assert!(whole.path().join("density.png").exists());
    let nll = metric(whole.path(), "nll");
    assert_eq!(nll.len(), 3);
    assert!(nll[2] < nll[0] - 0.05, "the NLL falls: {nll:?}");

    let pieces = tmp("pieces");
    let args = ["--iters", "30", "--checkpoint-every", "10"];
    resumes_like_one_run(train, &args, 10, whole.path(), pieces.path(), "nll");
    Ok(())
}

#[test]
fn checkpointing_trains_as_backprop() -> Result<()> {
    // Checkpointed backprop computes backprop's gradients from replayed steps: the same
    // training, up to the order of the floating-point sums (measured: the same NLL to 6 digits).
    let mut nll = vec![];
    for gradient in ["backprop", "checkpoint"] {
        let out = tmp(gradient);
        // At most 2 stored states: the replay's stretches hold several steps each.
        let args = [
            "--iters",
            "10",
            "--checkpoint-every",
            "5",
            "--gradient",
            gradient,
            "--checkpoints",
            "2",
        ];
        ok(&train(out.path(), &args));
        let nfe_b = metric(out.path(), "nfe_b");
        assert_eq!(
            nfe_b[0] > 0.0,
            gradient == "checkpoint",
            "{gradient}: {nfe_b:?}"
        );
        nll.push(metric(out.path(), "nll"));
    }
    for (b, c) in nll[0].iter().zip(&nll[1]) {
        assert!(
            (b - c).abs() <= 1e-4 * b.abs(),
            "NLL {c} with checkpointing, {b} with backprop"
        );
    }
    Ok(())
}

#[test]
fn reversible_backprop_trains_as_backprop() -> Result<()> {
    // Reversible backprop differentiates another discretization of the same flow (the method
    // made reversible), exactly: the training follows backprop's to the solves' tolerance
    // (measured: NLL 1.617783 against the adjoint's 1.617810 after 100 iterations).
    let mut nll = vec![];
    for gradient in ["backprop", "reversible"] {
        let out = tmp(gradient);
        let args = [
            "--iters",
            "10",
            "--checkpoint-every",
            "5",
            "--gradient",
            gradient,
        ];
        ok(&train(out.path(), &args));
        let nfe_b = metric(out.path(), "nfe_b");
        assert_eq!(nfe_b[0] > 0.0, gradient == "reversible", "{nfe_b:?}");
        nll.push(metric(out.path(), "nll"));
    }
    for (b, r) in nll[0].iter().zip(&nll[1]) {
        assert!(
            (b - r).abs() <= 1e-3 * b.abs(),
            "NLL {r} with reversible backprop, {b} with backprop"
        );
    }
    Ok(())
}

#[test]
fn trains_with_rnode_regularizers() -> Result<()> {
    // --kinetic and --jacobian add RNODE's terms to the loss; the metrics record them beside
    // the NLL, which still falls.
    let out = tmp("rnode");
    let args = [
        "--iters",
        "30",
        "--checkpoint-every",
        "10",
        "--kinetic",
        "0.1",
        "--jacobian",
        "0.1",
    ];
    ok(&train(out.path(), &args));
    let nll = metric(out.path(), "nll");
    assert!(nll[2] < nll[0] - 0.05, "the NLL falls: {nll:?}");
    for name in ["kinetic", "jacobian"] {
        let v = metric(out.path(), name);
        assert_eq!(v.len(), 3, "{name}: {v:?}");
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{name}: {v:?}");
    }
    Ok(())
}

#[test]
fn refuses_other_checkpoints_and_bad_options() -> Result<()> {
    let out = tmp("refuse");
    ok(&train(out.path(), &["--iters", "2", "--test-points", "0"]));
    // Another width: the checkpoint's shapes do not fit.
    let o = train(out.path(), &["--iters", "4", "--resume", "--width", "9"]);
    fails_saying(&o, "does not fit this model");
    // Not a checkpoint at all.
    std::fs::write(out.path().join("checkpoint.safetensors"), b"junk")?;
    let o = train(out.path(), &["--iters", "4", "--resume"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a training checkpoint"), "{err}");
    for bad in [
        ["--iters", "0"],
        ["--tol", "-1"],
        ["--width", "0"],
        ["--checkpoints", "0"],
        ["--kinetic", "-1"],
        ["--jacobian", "nan"],
    ] {
        let o = train(out.path(), &bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }
    // Refused by name before any work (NaN noise made NaN points, found as a failing solve).
    for flag in ["--noise", "--lr", "--jacobian"] {
        fails_saying(&train(out.path(), &[flag, "nan"]), flag);
    }
    Ok(())
}

/// A small FFJORD (two hidden layers of 16, batch 64, loose tolerances, Hutchinson's
/// estimator), each setting replaced where `extra` gives its flag.
fn train_ffjord(out: &Path, extra: &[&str]) -> Output {
    let defaults = [
        ["--model", "ffjord"],
        ["--device", "cpu"],
        ["--hidden-dims", "16,16"],
        ["--trace", "rademacher"],
        ["--batch-size", "64"],
        ["--tol", "1e-3"],
        ["--lr", "1e-2"],
        ["--test-points", "256"],
        ["--image-size", "0"],
    ];
    run_with_defaults(env!("CARGO_BIN_EXE_train-cnf"), out, &defaults, extra)
}

#[test]
fn ffjord_learns_resumes_and_refuses_the_other_flow() -> Result<()> {
    // 20 iterations in one run and in two pieces: the Hutchinson noise comes from the
    // checkpointed generator, so the pieces give the same weights.
    let whole = tmp("ffjord-whole");
    let args = ["--iters", "20", "--checkpoint-every", "10"];
    let o = train_ffjord(whole.path(), &args);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("FFJORD (hidden [16, 16]"), "{stdout}");
    assert!(stdout.contains("trace Rademacher"), "{stdout}");
    let nll = metric(whole.path(), "nll");
    assert!(nll[1] < nll[0] - 0.05, "the NLL falls: {nll:?}");

    let pieces = tmp("ffjord-pieces");
    ok(&train_ffjord(
        pieces.path(),
        &[&args[..], &["--stop-after-steps", "10"]].concat(),
    ));
    ok(&train_ffjord(
        pieces.path(),
        &[&args[..], &["--resume"]].concat(),
    ));
    assert_eq!(
        tensors(&whole.path().join("checkpoint.safetensors")),
        tensors(&pieces.path().join("checkpoint.safetensors")),
        "the same weights, moments and generator as one run"
    );

    // The paper's flow refuses FFJORD's checkpoint, and FFJORD the paper's flow's.
    let o = train(whole.path(), &["--iters", "30", "--resume"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checkpoint of model `ffjord`, not `cnf`"),
        "{err}"
    );
    let planar = tmp("ffjord-planar");
    ok(&train(
        planar.path(),
        &["--iters", "2", "--test-points", "0"],
    ));
    let o = train_ffjord(planar.path(), &["--iters", "4", "--resume"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checkpoint of model `cnf`, not `ffjord`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn ffjord_options_are_checked() -> Result<()> {
    let out = tmp("ffjord-options");
    // The exact trace, softplus, RNODE's regularizers, on one of FFJORD's toy densities.
    let args = [
        "--data",
        "8gaussians",
        "--image-size",
        "16",
        "--iters",
        "4",
        "--checkpoint-every",
        "2",
        "--trace",
        "exact",
        "--activation",
        "softplus",
        "--kinetic",
        "0.1",
        "--jacobian",
        "0.1",
        "--train-t1",
        "--test-points",
        "0",
    ];
    ok(&train_ffjord(out.path(), &args));
    let t1 = metric(out.path(), "t1");
    assert!(
        t1.iter().all(|t| *t > 0.4 && *t < 0.6 && *t != 0.5),
        "the learned t1: {t1:?}"
    );
    assert!(out.path().join("density.png").exists());
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl"))?;
    assert!(metrics.contains("\"data\":\"EightGaussians\""), "{metrics}");
    for name in ["nll", "kinetic", "jacobian"] {
        let v = metric(out.path(), name);
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{name}: {v:?}");
    }
    // Options of the other flow, and bad sizes.
    for (bad, why) in [
        (
            &["--width", "8"][..],
            "--width is not an option of --model ffjord",
        ),
        (&["--hidden-dims", "16,0"][..], "hidden must list"),
        (&["--t1", "0"][..], "t1 must be finite and positive"),
        (&["--data", "spirals"][..], "invalid value 'spirals'"),
    ] {
        let o = train_ffjord(out.path(), bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    for flag in [&["--trace", "exact"][..], &["--train-t1"]] {
        let o = train(out.path(), flag);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        let want = format!("{} is not an option of --model planar", flag[0]);
        assert!(err.contains(&want), "{err}");
    }
    Ok(())
}

#[test]
fn ffjord_per_point_trains_and_checks_its_options() -> Result<()> {
    // Each point solved on its own: it trains, by the adjoint and by backprop, to nearly
    // the same NLL (the gradients agree to the solves' tolerance).
    let adjoint = tmp("ffjord-per-point");
    let args = ["--iters", "10", "--checkpoint-every", "5", "--per-point"];
    let o = train_ffjord(adjoint.path(), &args);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("each point solved on its own"), "{stdout}");
    assert!(
        stdout.contains("test NLL on 256 held-out points"),
        "{stdout}"
    );
    let nll = metric(adjoint.path(), "nll");
    assert!(nll[1] < nll[0], "the NLL falls: {nll:?}");
    let metrics = std::fs::read_to_string(adjoint.path().join("metrics.jsonl"))?;
    assert!(metrics.contains("\"per_point\":true"), "{metrics}");
    let backprop = tmp("ffjord-per-point-backprop");
    ok(&train_ffjord(
        backprop.path(),
        &[&args[..], &["--gradient", "backprop"]].concat(),
    ));
    let nll_b = metric(backprop.path(), "nll");
    assert!(
        (nll_b[1] - nll[1]).abs() < 1e-2,
        "{nll_b:?} against {nll:?}"
    );
    for (bad, why) in [
        (&["--kinetic", "0.1"][..], "neither the regularizers"),
        (&["--train-t1"][..], "neither the regularizers"),
        (
            &["--gradient", "checkpoint"][..],
            "--gradient adjoint or backprop",
        ),
    ] {
        let o = train_ffjord(adjoint.path(), &[&["--per-point"][..], bad].concat());
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    let o = train(adjoint.path(), &["--per-point"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--per-point is not an option of --model planar"),
        "{err}"
    );
    Ok(())
}
