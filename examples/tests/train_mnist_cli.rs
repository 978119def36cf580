//! The training binary end to end on a tiny generated dataset (no network).

mod common;

use anyhow::Result;
use common::{fails_saying, ok, tensors};
use node_models::mnist::{self, FILES};
use node_models::Rng;
use std::path::Path;
use std::process::Command;

/// A new empty folder, removed with everything in it when dropped; it derefs to its path.
struct Tmp(tempfile::TempDir);

impl std::ops::Deref for Tmp {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

fn tmp(name: &str) -> Tmp {
    Tmp(tempfile::Builder::new()
        .prefix(&format!("train-mnist-cli-{name}-"))
        .tempdir()
        .expect("a temporary folder"))
}

fn dataset(dir: &Path) -> Result<()> {
    let mut rng = Rng::new(11);
    mnist::write_idx(dir, FILES[0], FILES[1], &mnist::synthetic(256, &mut rng))?;
    mnist::write_idx(dir, FILES[2], FILES[3], &mnist::synthetic(64, &mut rng))?;
    Ok(())
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train-mnist"))
        .args([
            "--device",
            "cpu",
            "--no-fetch",
            "--batch-size",
            "32",
            "--test-batch-size",
            "64",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .output()
        .expect("the binary runs")
}

#[test]
fn odenet_trains_writes_metrics_and_checkpoint_and_evaluates() -> Result<()> {
    let data = tmp("data-ode");
    dataset(&data)?;
    let out = tmp("out-ode");
    let o = train(&data, &out, &["--model", "odenet", "--epochs", "1"]);
    ok(&o);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    assert_eq!(metrics.lines().count(), 1);
    for key in [
        "\"epoch\":1",
        "\"test_acc\"",
        "\"nfe_f\"",
        "\"nfe_b\"",
        "\"epoch_time_s\"",
        "\"peak_rss_mib\"",
    ] {
        assert!(metrics.contains(key), "{key} missing in {metrics}");
    }
    let ckpt = out.join("checkpoint.safetensors");
    assert!(ckpt.exists());
    let o = train(
        &data,
        &out,
        &["--model", "odenet", "--eval", ckpt.to_str().unwrap()],
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("test accuracy"));
    // A checkpoint of another model is refused, clearly.
    let o = train(
        &data,
        &out,
        &["--model", "resnet", "--resume", "--epochs", "2"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checkpoint of model `odenet`, not `resnet`"),
        "{err}"
    );
    Ok(())
}

/// The metrics of each epoch line without its times and memory (which differ between runs).
fn learning_metrics(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            l.split(',')
                .filter(|f| !f.contains("time") && !f.contains("rss"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// A dataset and, beside it, two epochs of the MLP trained in one go: (data, run) folders.
fn two_mlp_epochs(tag: &str) -> Result<(Tmp, Tmp)> {
    let data = tmp(&format!("data-{tag}"));
    dataset(&data)?;
    let straight = tmp(&format!("{tag}-straight"));
    ok(&train(
        &data,
        &straight,
        &["--model", "mlp", "--epochs", "2"],
    ));
    Ok((data, straight))
}

#[test]
fn stopping_inside_epochs_and_resuming_loses_nothing() -> Result<()> {
    // 256 examples in steps of 32: 8 steps per epoch. Stop at step 3 of epoch 1, then at step
    // 3 of epoch 2 (5 + 3 steps), then finish: the same run, bit for bit, as one go.
    let (data, straight) = two_mlp_epochs("steps")?;
    let pieces = tmp("steps-pieces");
    let run = |extra: &[&str]| {
        let mut args = vec!["--model", "mlp", "--epochs", "2", "--resume"];
        args.extend_from_slice(extra);
        let o = train(&data, &pieces, &args);
        ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run(&["--stop-after-steps", "3"]);
    assert!(
        out.contains("stopped after step 3 of 8 in epoch 1"),
        "{out}"
    );
    let out = run(&["--stop-after-steps", "8"]);
    assert!(
        out.contains("resumed from") && out.contains("at step 3 of epoch 1"),
        "{out}"
    );
    assert!(
        out.contains("stopped after step 3 of 8 in epoch 2"),
        "{out}"
    );
    let out = run(&[]);
    assert!(out.contains("at step 3 of epoch 2"), "{out}");
    assert_eq!(
        tensors(&straight.join("checkpoint.safetensors")),
        tensors(&pieces.join("checkpoint.safetensors"))
    );
    assert_eq!(
        learning_metrics(&straight.join("metrics.jsonl")),
        learning_metrics(&pieces.join("metrics.jsonl"))
    );
    // A checkpoint from inside an epoch does not fit a run over other examples: a clear error.
    let other = tmp("steps-other");
    ok(&train(
        &data,
        &other,
        &["--model", "mlp", "--stop-after-steps", "2"],
    ));
    let o = train(
        &data,
        &other,
        &["--model", "mlp", "--resume", "--train-subset", "128"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unfinished epoch"),
        "{err}"
    );
    Ok(())
}

#[test]
fn resume_continues_a_run_exactly() -> Result<()> {
    let (data, straight) = two_mlp_epochs("resume")?;
    let pieces = tmp("pieces");
    ok(&train(&data, &pieces, &["--model", "mlp", "--epochs", "1"]));
    ok(&train(
        &data,
        &pieces,
        &["--model", "mlp", "--epochs", "2", "--resume"],
    ));
    // Same weights, optimizer state, epoch and generator position, bit for bit.
    assert_eq!(
        tensors(&straight.join("checkpoint.safetensors")),
        tensors(&pieces.join("checkpoint.safetensors"))
    );
    assert_eq!(
        std::fs::read_to_string(pieces.join("metrics.jsonl"))?
            .lines()
            .count(),
        2
    );
    Ok(())
}

#[test]
fn missing_or_corrupt_data_gives_a_clear_error() -> Result<()> {
    let empty = tmp("empty");
    let o = train(
        &empty,
        &tmp("out-missing"),
        &["--model", "mlp", "--epochs", "1"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not found") && err.contains("fetch-mnist.sh"),
        "{err}"
    );
    let data = tmp("data-corrupt");
    dataset(&data)?;
    let f = data.join(FILES[0]);
    let b = std::fs::read(&f)?;
    std::fs::write(&f, &b[..1000])?;
    let o = train(
        &data,
        &tmp("out-corrupt"),
        &["--model", "mlp", "--epochs", "1"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated"));
    Ok(())
}

/// `--cuda-graph` needs a CUDA device, and a fixed-step, backprop ODE block: clear errors.
/// Settings that would turn the parameters NaN are refused by name before any work
/// (`--lr nan` trained a step, then failed in the ODE solve as "non-finite value at t = 0").
#[test]
fn refuses_bad_numbers() -> Result<()> {
    let data = tmp("data-numbers");
    dataset(&data)?;
    for (flag, value) in [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--momentum", "nan"),
        ("--checkpoint-minutes", "nan"),
    ] {
        fails_saying(&train(&data, &tmp("out-numbers"), &[flag, value]), flag);
    }
    Ok(())
}

#[test]
fn cuda_graph_is_refused_where_it_cannot_record() -> Result<()> {
    let data = tmp("data-graph");
    dataset(&data)?;
    for (extra, want) in [
        (&["--model", "mlp"][..], "needs a CUDA device"),
        (&["--model", "rknet"][..], "needs a CUDA device"),
        (&["--model", "odenet"][..], "fixed steps and backprop"),
        (
            &["--model", "rknet", "--method", "dopri5"][..],
            "fixed steps and backprop",
        ),
    ] {
        let o = train(
            &data,
            &tmp("out-graph"),
            &[extra, &["--cuda-graph"]].concat(),
        );
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{err}");
    }
    Ok(())
}

#[test]
fn augmented_odenet_trains_and_refuses_other_checkpoints() -> Result<()> {
    let data = tmp("data-anode");
    dataset(&data)?;
    let out = tmp("out-anode");
    let args = [
        "--model",
        "odenet",
        "--augment-dim",
        "5",
        "--train-subset",
        "64",
    ];
    ok(&train(
        &data,
        &out,
        &[&args[..], &["--epochs", "1"]].concat(),
    ));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    assert!(metrics.contains("\"test_acc\""), "{metrics}");
    // Without the augmentation the checkpoint does not fit.
    let o = train(
        &data,
        &out,
        &[
            "--model",
            "odenet",
            "--resume",
            "--epochs",
            "2",
            "--train-subset",
            "64",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not fit"), "{err}");
    let o = train(&data, &out, &["--model", "resnet", "--augment-dim", "5"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("augmentation is for ODE-Net and RK-Net"),
        "{err}"
    );
    Ok(())
}

/// ODE-Net on Galerkin convolutions trains, evaluates its checkpoint, and a model with
/// another basis of as many functions (Fourier, 1 harmonic: 3 functions, as Legendre to
/// degree 2) refuses it by name, not by shape; a malformed basis and the ResNet are refused.
#[test]
fn galerkin_odenet_trains_and_checkpoints_record_the_basis() -> Result<()> {
    let data = tmp("data-galerkin");
    dataset(&data)?;
    let out = tmp("out-galerkin");
    let args = [
        "--model",
        "odenet",
        "--galerkin",
        "legendre:2",
        "--train-subset",
        "64",
    ];
    ok(&train(
        &data,
        &out,
        &[&args[..], &["--epochs", "1"]].concat(),
    ));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    assert!(
        metrics.contains("\"model\":\"odenet-galerkin-legendre:2\""),
        "{metrics}"
    );
    let ckpt = out.join("checkpoint.safetensors");
    let o = train(
        &data,
        &out,
        &[&args[..4], &["--eval", ckpt.to_str().unwrap()]].concat(),
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("test accuracy"));
    for other in [&["--galerkin", "fourier:1"][..], &[]] {
        let o = train(
            &data,
            &out,
            &[
                &["--model", "odenet", "--resume", "--epochs", "2"][..],
                other,
            ]
            .concat(),
        );
        fails_saying(&o, "checkpoint of model `odenet-galerkin-legendre:2`");
    }
    let o = train(&data, &out, &["--galerkin", "chebyshev:3"]);
    fails_saying(&o, "expected fourier:M");
    let o = train(
        &data,
        &out,
        &["--model", "resnet", "--galerkin", "fourier:1"],
    );
    fails_saying(&o, "Galerkin convolutions are for ODE-Net and RK-Net");
    Ok(())
}
