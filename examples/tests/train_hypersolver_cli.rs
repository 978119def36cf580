//! `train-hypersolver` end to end on a tiny generated dataset and an untrained ODE-Net
//! checkpoint (no network): metrics, checkpoint, the evaluation table, a run stopped and
//! resumed equal to one that was not, and the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::{fails_saying, metric, ok, tensors};
use node_models::checkpoint;
use node_models::mnist::{self, FILES};
use node_models::{
    init, MnistModel, ModelKind, OdeConfig, Rng, SgdConfig, SgdMomentum, TimeDependence,
};
use std::path::Path;
use std::process::{Command, Output};

fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("train-hypersolver-cli-{name}-"))
        .tempdir()
        .expect("a temporary folder")
}

/// Synthetic digits, and a checkpoint of an initialised `kind` model as `train-mnist` writes.
fn setup(dir: &Path, kind: ModelKind) -> Result<()> {
    setup_with(dir, kind, TimeDependence::Concat)
}

/// [`setup`] with the block's convolutions depending on `t` as `time` says.
fn setup_with(dir: &Path, kind: ModelKind, time: TimeDependence) -> Result<()> {
    let mut rng = Rng::new(3);
    mnist::write_idx(dir, FILES[0], FILES[1], &mnist::synthetic(64, &mut rng))?;
    mnist::write_idx(dir, FILES[2], FILES[3], &mnist::synthetic(16, &mut rng))?;
    let varmap = VarMap::new();
    let model = MnistModel::new(
        kind,
        &OdeConfig {
            time,
            ..OdeConfig::default_for(kind)
        },
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    init::pytorch_default(&varmap, &mut rng)?;
    let opt = SgdMomentum::new(node_adjoint::sorted_vars(&varmap), SgdConfig::default())?;
    checkpoint::save(
        &dir.join("model.safetensors"),
        &model.name(),
        &varmap,
        &opt,
        1,
        &rng,
        None,
    )?;
    Ok(())
}

fn run(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train-hypersolver"))
        .args([
            "--device",
            "cpu",
            "--no-fetch",
            "--batch-size",
            "4",
            "--hidden",
            "8",
            "--ref-tol",
            "1e-3",
            "--checkpoint-every",
            "2",
            "--test-batch-size",
            "8",
        ])
        .arg("--data-dir")
        .arg(dir)
        .arg("--odenet")
        .arg(dir.join("model.safetensors"))
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn trains_evaluates_and_resumes_exactly() -> Result<()> {
    let dir = tmp("data");
    setup(dir.path(), ModelKind::OdeNet)?;
    let straight = tmp("straight");
    let o = run(dir.path(), straight.path(), &["--iters", "4"]);
    ok(&o);
    assert_eq!(metric(straight.path(), "iter"), [2.0, 4.0]);
    // The correction starts at zero: "left" (the residual's unexplained fraction) is 1 at
    // first, and below 1 once trained.
    let left = metric(straight.path(), "left");
    assert!(left.iter().all(|l| l.is_finite() && *l > 0.0), "{left:?}");
    let table = std::fs::read_to_string(straight.path().join("evaluation.md"))?;
    for row in [
        "| dopri5, rtol = atol = 1e-3 (training) |",
        "| euler, 2 steps |",
        "| euler, 4 steps |",
        "| midpoint, 2 steps |",
        "| rk4, 2 steps |",
        "| hyper-euler, 2 steps |",
    ] {
        assert!(table.contains(row), "{row} missing in\n{table}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("Test set: 16 images"));

    // Stopped after 3 iterations, then resumed: the same checkpoint, bit for bit.
    let pieces = tmp("pieces");
    ok(&run(
        dir.path(),
        pieces.path(),
        &[
            "--iters",
            "4",
            "--stop-after-steps",
            "3",
            "--test-subset",
            "0",
        ],
    ));
    assert_eq!(metric(pieces.path(), "iter"), [2.0, 3.0]);
    ok(&run(
        dir.path(),
        pieces.path(),
        &["--iters", "4", "--resume"],
    ));
    assert_eq!(
        tensors(&straight.path().join("checkpoint.safetensors")),
        tensors(&pieces.path().join("checkpoint.safetensors"))
    );
    // Another base method or step count does not resume from this checkpoint.
    let err = stderr(&run(
        dir.path(),
        pieces.path(),
        &["--iters", "6", "--resume", "--steps", "3"],
    ));
    assert!(err.contains("hypersolver-odenet-euler-2steps"), "{err}");
    // Trajectory fitting: its own checkpoint name, refused by the residual fit and back.
    let err = stderr(&run(
        dir.path(),
        pieces.path(),
        &["--iters", "6", "--resume", "--fit", "trajectory"],
    ));
    assert!(
        err.contains("hypersolver-odenet-euler-2steps-trajectory"),
        "{err}"
    );
    let trajectory = tmp("trajectory");
    ok(&run(
        dir.path(),
        trajectory.path(),
        &["--iters", "2", "--fit", "trajectory", "--test-subset", "0"],
    ));
    let left = metric(trajectory.path(), "left");
    assert!(
        left.len() == 1 && left[0].is_finite() && left[0] > 0.0,
        "{left:?}"
    );
    Ok(())
}

#[test]
fn bad_input_is_refused_clearly() -> Result<()> {
    let dir = tmp("bad");
    setup(dir.path(), ModelKind::ResNet)?;
    let out = tmp("bad-out");
    // A ResNet's checkpoint is not an ODE-Net's.
    let err = stderr(&run(dir.path(), out.path(), &["--iters", "2"]));
    assert!(
        err.contains("checkpoint of model `resnet`, not `odenet`"),
        "{err}"
    );
    let err = stderr(&run(
        dir.path(),
        out.path(),
        &["--iters", "2", "--method", "dopri5"],
    ));
    assert!(err.contains("explicit fixed-step"), "{err}");
    let err = stderr(&run(dir.path(), out.path(), &["--steps", "0"]));
    assert!(err.contains("must be positive"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_train-hypersolver"))
        .args(["--odenet", "no-such-file.safetensors", "--no-fetch"])
        .output()?;
    let err = stderr(&o);
    assert!(err.contains("no ODE-Net checkpoint at"), "{err}");
    Ok(())
}

/// The block of an ODE-Net on Galerkin convolutions: `--galerkin` with its basis loads the
/// checkpoint and trains; without it, or with another basis, the checkpoint is refused by name.
#[test]
fn galerkin_odenets_need_their_basis() -> Result<()> {
    let dir = tmp("galerkin");
    let basis = "legendre:1".parse().map_err(anyhow::Error::msg)?;
    setup_with(
        dir.path(),
        ModelKind::OdeNet,
        TimeDependence::Galerkin(basis),
    )?;
    let out = tmp("galerkin-out");
    ok(&run(
        dir.path(),
        out.path(),
        &["--iters", "2", "--galerkin", "legendre:1"],
    ));
    assert_eq!(metric(out.path(), "iter"), [2.0]);
    for other in [&[][..], &["--galerkin", "fourier:1"]] {
        let o = run(
            dir.path(),
            out.path(),
            &[&["--iters", "2"][..], other].concat(),
        );
        fails_saying(&o, "checkpoint of model `odenet-galerkin-legendre:1`");
    }
    Ok(())
}
