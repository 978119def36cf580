//! Helpers shared by the kernels: contiguous views of strided storage.

use std::borrow::Cow;

use candle_core::Layout;

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
