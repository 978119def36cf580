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
