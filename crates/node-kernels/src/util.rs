//! Helpers shared by the kernels: contiguous views of strided storage.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

/// The elements of `v` under `layout` in logical (row-major) order: a borrowed slice when the
/// layout is contiguous, a gathered copy otherwise.
pub(crate) fn contiguous<'a, T: Copy>(v: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Cow::Borrowed(&v[a..b]),
        None => Cow::Owned(strided_offsets(layout).map(|i| v[i]).collect()),
    }
}

/// Storage offsets of a layout's elements in logical (row-major) order.
pub(crate) fn strided_offsets(layout: &Layout) -> impl Iterator<Item = usize> + '_ {
    let dims = layout.dims();
    let strides = layout.stride();
    let n = layout.shape().elem_count();
    let mut index = vec![0usize; dims.len()];
    let mut offset = layout.start_offset();
    (0..n).map(move |_| {
        let current = offset;
        // Odometer increment from the last dimension.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            offset += strides[d];
            if index[d] < dims[d] {
                break;
            }
            offset -= strides[d] * dims[d];
            index[d] = 0;
        }
        current
    })
}

/// Runs `f32_fn` or `f64_fn` on two CPU storages of the same float dtype, in logical order.
/// (Two closures because a closure cannot be generic over the element type.)
pub(crate) fn with_slices2(
    op: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    f32_fn: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64_fn: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(f32_fn(&contiguous(a, l1), &contiguous(b, l2)))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(f64_fn(&contiguous(a, l1), &contiguous(b, l2)))
        }
        _ => candle_core::bail!(
            "{op}: unsupported dtypes {:?} and {:?}",
            s1.dtype(),
            s2.dtype()
        ),
    })
}

/// [`with_slices2`] for three storages.
pub(crate) fn with_slices3(
    op: &str,
    [(s1, l1), (s2, l2), (s3, l3)]: [(&CpuStorage, &Layout); 3],
    f32_fn: impl FnOnce(&[f32], &[f32], &[f32]) -> Vec<f32>,
    f64_fn: impl FnOnce(&[f64], &[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32(f32_fn(
            &contiguous(a, l1),
            &contiguous(b, l2),
            &contiguous(c, l3),
        )),
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64(f64_fn(
            &contiguous(a, l1),
            &contiguous(b, l2),
            &contiguous(c, l3),
        )),
        _ => candle_core::bail!(
            "{op}: unsupported dtypes {:?}, {:?} and {:?}",
            s1.dtype(),
            s2.dtype(),
            s3.dtype()
        ),
    })
}

/// Whether a CUDA kernel of this project's own replaces Candle's ops for `op` (`conv`,
/// `group_norm`, `lincomb`, `optim`): yes, unless the environment variable `NODE_CUDA_KERNELS_OFF`
/// (read once per process; comma-separated) names it or says `all`. Off, the op runs on
/// Candle's CUDA ops, which a GPU benchmark can then compare with in one build.
pub(crate) fn own_cuda_kernel(op: &str) -> bool {
    static OFF: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let off = OFF.get_or_init(|| std::env::var("NODE_CUDA_KERNELS_OFF").unwrap_or_default());
    !turned_off(off, op)
}

/// Whether the comma-separated list `off` names `op` or says `all`.
fn turned_off(off: &str, op: &str) -> bool {
    off.split(',')
        .any(|o| matches!(o.trim(), "all") || o.trim() == op)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_kernels_turned_off_by_name_or_all() {
        use super::turned_off;
        assert!(!turned_off("", "conv"));
        assert!(turned_off("conv", "conv") && turned_off(" group_norm , conv", "conv"));
        assert!(turned_off("all", "group_norm"));
        assert!(!turned_off("convolution,none", "conv"));
    }
}
