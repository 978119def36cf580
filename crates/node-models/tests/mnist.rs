//! The IDX reader on generated good and corrupt files, and the batcher.

use anyhow::Result;
use candle_core::Device;
use node_models::mnist::{self, DataError, Split, FILES, PIXELS};
use node_models::Rng;
use std::path::Path;

/// A new empty folder, removed with everything in it when the test ends.
fn tmpdir(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("node-models-test-{name}-"))
        .tempdir()?)
}

fn write_all(dir: &Path, train: &Split, test: &Split) -> Result<()> {
    mnist::write_idx(dir, FILES[0], FILES[1], train)?;
    mnist::write_idx(dir, FILES[2], FILES[3], test)?;
    Ok(())
}

fn data_error(r: candle_core::Result<mnist::Mnist>) -> String {
    let e = r.expect_err("expected a data error");
    match &e {
        candle_core::Error::WrappedContext { wrapped, .. } => {
            assert!(
                wrapped.downcast_ref::<DataError>().is_some(),
                "not a DataError: {e}"
            );
        }
        _ => panic!("not a wrapped DataError: {e}"),
    }
    e.to_string()
}

#[test]
fn round_trip_of_generated_files() -> Result<()> {
    let tmp = tmpdir("roundtrip")?;
    let dir = tmp.path();
    let mut rng = Rng::new(1);
    let (train, test) = (
        mnist::synthetic(50, &mut rng),
        mnist::synthetic(20, &mut rng),
    );
    write_all(dir, &train, &test)?;
    let m = mnist::load_dir(dir)?;
    assert_eq!(m.train.images, train.images);
    assert_eq!(m.train.labels, train.labels);
    assert_eq!(m.test.len(), 20);
    Ok(())
}

#[test]
fn corrupt_files_are_refused_with_a_clear_error() -> Result<()> {
    let tmp = tmpdir("corrupt")?;
    let dir = tmp.path();
    let mut rng = Rng::new(2);
    let (train, test) = (
        mnist::synthetic(30, &mut rng),
        mnist::synthetic(10, &mut rng),
    );
    let reset = || write_all(dir, &train, &test);
    let path = |i: usize| dir.join(FILES[i]);

    // Missing file: says what to run.
    reset()?;
    std::fs::remove_file(path(2))?;
    let msg = data_error(mnist::load_dir(dir));
    assert!(
        msg.contains("not found") && msg.contains("fetch-mnist.sh"),
        "{msg}"
    );

    // Truncated image file.
    reset()?;
    let b = std::fs::read(path(0))?;
    std::fs::write(path(0), &b[..b.len() - 100])?;
    assert!(data_error(mnist::load_dir(dir)).contains("truncated"));

    // Shorter than a header.
    std::fs::write(path(0), [0u8; 5])?;
    assert!(data_error(mnist::load_dir(dir)).contains("header"));

    // Swapped files: labels where images belong (wrong magic).
    reset()?;
    std::fs::copy(path(1), path(0))?;
    assert!(data_error(mnist::load_dir(dir)).contains("magic"));

    // Wrong image size in the header.
    reset()?;
    let mut b = std::fs::read(path(0))?;
    b[8..12].copy_from_slice(&32u32.to_be_bytes());
    std::fs::write(path(0), &b)?;
    assert!(data_error(mnist::load_dir(dir)).contains("28×28"));

    // A label that is not a digit.
    reset()?;
    let mut b = std::fs::read(path(3))?;
    b[8 + 4] = 12;
    std::fs::write(path(3), &b)?;
    assert!(data_error(mnist::load_dir(dir)).contains("not a digit"));

    // Images and labels of different lengths.
    reset()?;
    mnist::write_idx(dir, FILES[2], "other", &test)?;
    mnist::write_idx(dir, "other", FILES[3], &test.take(7))?;
    assert!(data_error(mnist::load_dir(dir)).contains("10 images but 7 labels"));
    Ok(())
}

#[test]
fn batches_and_augmentation() -> Result<()> {
    let mut rng = Rng::new(3);
    let split = mnist::synthetic(8, &mut rng);
    let (x, y) = mnist::batch(&split, &[0, 3, 5], None, &Device::Cpu)?;
    assert_eq!(x.dims(), &[3, 1, 28, 28]);
    assert_eq!(
        y.to_vec1::<u32>()?,
        vec![
            split.labels[0] as u32,
            split.labels[3] as u32,
            split.labels[5] as u32
        ]
    );
    // Unaugmented pixels are the bytes / 255.
    let first: Vec<f32> = x.get(0)?.flatten_all()?.to_vec1()?;
    for (p, b) in first.iter().zip(&split.images[..PIXELS]) {
        assert!((p - *b as f32 / 255.0).abs() < 1e-7);
    }
    // Augmented: a shifted copy (same multiset of non-zero pixels inside the crop), in [0, 1].
    let mut aug = Rng::new(4);
    let (xa, _) = mnist::batch(&split, &[0; 32], Some(&mut aug), &Device::Cpu)?;
    let v: Vec<f32> = xa.flatten_all()?.to_vec1()?;
    assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
    let distinct: std::collections::HashSet<Vec<u32>> = (0..32)
        .map(|i| {
            xa.get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|p| p.to_bits())
                .collect()
        })
        .collect();
    assert!(
        distinct.len() > 10,
        "random crops should differ ({} distinct of 32)",
        distinct.len()
    );
    Ok(())
}

#[test]
fn real_mnist_if_present() -> Result<()> {
    // Runs only where scripts/fetch-mnist.sh has been run (tests never download).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    if !dir.join(FILES[0]).exists() {
        eprintln!("data/mnist not present: skipped");
        return Ok(());
    }
    let m = mnist::load_dir(&dir)?;
    assert_eq!((m.train.len(), m.test.len()), (60_000, 10_000));
    let mut counts = [0usize; 10];
    m.test.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(
        counts,
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    Ok(())
}
