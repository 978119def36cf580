//! Helpers of the binaries' end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

/// Fails with the binary's output unless it succeeded.
pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every tensor of a safetensors file, by name, as the bytes of its values in f64: equal
/// only when bit for bit equal.
pub fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> =
        candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                let values = t
                    .flatten_all()
                    .unwrap()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                (k, values.iter().flat_map(|x| x.to_le_bytes()).collect())
            })
            .collect();
    v.sort();
    v
}

/// The values of `key` in every line of `out/metrics.jsonl`.
pub fn metric(out: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v = l.split(&format!("\"{key}\":")).nth(1).unwrap();
            v.split([',', '}']).next().unwrap().parse().unwrap()
        })
        .collect()
}

/// The value of `key` in `out/summary.json`, as written (strings keep their quotes).
pub fn summary_field(out: &Path, key: &str) -> String {
    let s = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let v = s
        .split(&format!("\"{key}\":"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {s}"));
    v.split([',', '}']).next().unwrap().trim().to_string()
}

/// A temporary folder `<prefix>-<name>-…`.
pub fn tmp(prefix: &str, name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-{name}-"))
        .tempdir()
        .expect("a temporary folder")
}

/// Runs the binary `bin` with `--out-dir out`, then `extra`, then each of `defaults` whose flag
/// `extra` does not give.
pub fn run_with_defaults(bin: &str, out: &Path, defaults: &[[&str; 2]], extra: &[&str]) -> Output {
    std::process::Command::new(bin)
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .args(
            defaults
                .iter()
                .filter(|[flag, _]| !extra.contains(flag))
                .flatten(),
        )
        .output()
        .expect("the binary runs")
}

/// A run that failed with `says` in its error output, and did not panic.
pub fn fails_saying(o: &Output, says: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted where `{says}` was expected");
    assert!(
        err.contains(says) && !err.contains("panicked"),
        "expected `{says}`: {err}"
    );
}

/// Another trainer (`bin`) refuses the checkpoint in `out` by its model name: `ours`, not
/// `theirs`.
pub fn other_trainer_refuses(bin: &str, out: &Path, ours: &str, theirs: &str) {
    let o = std::process::Command::new(bin)
        .args(["--device", "cpu", "--resume", "--iters", "4", "--out-dir"])
        .arg(out)
        .output()
        .expect("the other trainer runs");
    fails_saying(&o, &format!("checkpoint of model `{ours}`, not `{theirs}`"));
}

/// Trains with `args` in three pieces into `pieces`: stopped after `piece` iterations,
/// resumed and stopped again, resumed to the end. Checks that each stop and resume says so
/// and that the pieces end where the one run in `whole` (the same `args`) did: the same
/// checkpoint, bit for bit (weights, the optimizer's state, the generator), and the same
/// values of `key` in the metrics.
pub fn resumes_like_one_run(
    train: impl Fn(&Path, &[&str]) -> Output,
    args: &[&str],
    piece: usize,
    whole: &Path,
    pieces: &Path,
    key: &str,
) {
    let piece = piece.to_string();
    let o = train(pieces, &[args, &["--stop-after-steps", &piece]].concat());
    ok(&o);
    let stopped = format!("stopped after iteration {piece}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&stopped));
    let o = train(
        pieces,
        &[args, &["--resume", "--stop-after-steps", &piece]].concat(),
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("resumed from"));
    ok(&train(pieces, &[args, &["--resume"]].concat()));
    assert_eq!(
        tensors(&whole.join("checkpoint.safetensors")),
        tensors(&pieces.join("checkpoint.safetensors")),
        "the checkpoint (weights, optimizer state, generator): the same as one run's"
    );
    assert_eq!(metric(whole, key), metric(pieces, key));
}
