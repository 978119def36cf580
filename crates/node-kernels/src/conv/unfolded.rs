//! The convolution as one unfolding and one matrix product over the whole batch, written once
//! over Candle's backend storage: what [`super::conv2d`] runs on CUDA (the products are
//! cuBLAS's, through Candle's `matmul`; the data movement is `cuda/conv.cu`).
//!
//! - forward: `cols = im2col(x)` (`[B·P][K]`, `K = C·kh·kw`), `rows = cols · Wᵀ`
//!   (`[B·P][C_out]`), rearranged to NCHW with the bias added: 3 launches.
//! - input gradient: `dy` as rows (a strided copy), `dcols = dy · W`, `dx = col2im(dcols)`,
//!   which gathers each pixel's taps (no atomics: the same sums every run): 3 launches.
//! - kernel gradient: `dW = dyᵀ · im2col(x)`, the unfolding recomputed rather than kept from
//!   the forward pass: 3 launches.
//!
//! Candle's CUDA `conv2d` has the same forward pass, but its backward pass computes the input
//! gradient with `conv_transpose2d`, a direct kernel that loops, per input element, over every
//! output channel and tap: 14% of an ODE-Net training step's GPU time on an H100 (see
//! results/README.md, second session), where the product above is a few microseconds.
//!
//! `Unfold` is implemented for `CudaStorage` (`cuda/conv.rs`) and, in the tests, for
//! `CpuStorage`, which runs this module's composition — the products' shapes and layouts —
//! on the CPU against the CPU kernels.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{Layout, Result, Shape};

use super::Geometry;

/// The data movement around the products, per backend.
pub(crate) trait Unfold: BackendStorage<Device: BackendDevice<Storage = Self>> {
    /// `cols[(b, oy, ox)][(c, i, j)] = x[b, c, oy·s + i·d − p, ox·s + j·d − p]`, 0 outside the
    /// image: `[B·P][K]`, contiguous. `self` is `x` under `l` (any strides). With a time
    /// channel, `c = 0` is the time (0 outside the image) and `c > 0` the input's `c − 1`.
    fn im2col(&self, l: &Layout, g: &Geometry) -> Result<Self>;

    /// The adjoint of [`Unfold::im2col`]: every entry of `self` (`[B·P][K]`, contiguous)
    /// summed into the pixel it came from, `[B][C][H][W]` (the time channel's entries, when
    /// there is one, dropped).
    fn col2im(&self, g: &Geometry) -> Result<Self>;

    /// `y[b][co][p] = self[(b, p)][co] (+ bias[co])`: `self` is `[B·P][C_out]`, contiguous;
    /// the bias `[C_out]` contiguous under its layout.
    fn rows_to_nchw(&self, bias: Option<(&Self, &Layout)>, g: &Geometry) -> Result<Self>;
}

/// `s` under `l` as contiguous storage: itself (and its offset) when it is, a copy otherwise.
fn contiguous<'a, S: Unfold>(
    s: &'a S,
    l: &Layout,
    copy: &'a mut Option<S>,
) -> Result<(&'a S, usize)> {
    if l.is_contiguous() {
        return Ok((s, l.start_offset()));
    }
    // SAFETY: `copy_strided_src` writes every element.
    let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok((copy.insert(dst), 0))
}

/// The output gradient `[B][C_out][oh][ow]` (any strides) as rows `[B·P][C_out]`, contiguous.
fn rows_of<S: Unfold>(dy: &S, l: &Layout, g: &Geometry) -> Result<S> {
    g.check_output(l, "conv2d backward")?;
    let nhwc = l.permute(&[0, 2, 3, 1])?;
    // SAFETY: `copy_strided_src` writes every element.
    let mut rows = unsafe { dy.device().alloc_uninit(nhwc.shape(), dy.dtype())? };
    dy.copy_strided_src(&mut rows, 0, &nhwc)?;
    Ok(rows)
}

fn zeros<S: Unfold>(like: &S, shape: impl Into<Shape>) -> Result<S> {
    like.device().zeros_impl(&shape.into(), like.dtype())
}

/// The forward pass, `[B][C_out][oh][ow]` contiguous.
pub(crate) fn forward<S: Unfold>(
    x: &S,
    lx: &Layout,
    w: &S,
    lw: &Layout,
    bias: Option<(&S, &Layout)>,
    g: &Geometry,
) -> Result<S> {
    let (rows, k) = (g.b * g.pixels(), g.k());
    if rows == 0 {
        return zeros(x, (g.b, g.co, g.oh, g.ow));
    }
    let cols = x.im2col(lx, g)?;
    let mut copy = None;
    let (w, w0) = contiguous(w, lw, &mut copy)?;
    // rows[b·p][co] = cols[b·p][k] · Wᵀ[k][co]
    let wt = Layout::contiguous_with_offset((g.co, k), w0).transpose(0, 1)?;
    let prod = cols.matmul(w, (1, rows, g.co, k), &Layout::contiguous((rows, k)), &wt)?;
    prod.rows_to_nchw(bias, g)
}

/// The input gradient from the output gradient `dy` and the kernel `w`, `[B][C][H][W]`.
pub(crate) fn backward_input<S: Unfold>(
    dy: &S,
    ldy: &Layout,
    w: &S,
    lw: &Layout,
    g: &Geometry,
) -> Result<S> {
    let (rows, k) = (g.b * g.pixels(), g.k());
    if rows == 0 {
        return zeros(dy, (g.b, g.xc(), g.h, g.w));
    }
    let dyr = rows_of(dy, ldy, g)?;
    let mut copy = None;
    let (w, w0) = contiguous(w, lw, &mut copy)?;
    // dcols[b·p][k] = dy[b·p][co] · W[co][k]
    let dcols = dyr.matmul(
        w,
        (1, rows, k, g.co),
        &Layout::contiguous((rows, g.co)),
        &Layout::contiguous_with_offset((g.co, k), w0),
    )?;
    dcols.col2im(g)
}

/// The kernel gradient from the input `x` and the output gradient `dy`, `[C_out][C][kh][kw]`.
pub(crate) fn backward_kernel<S: Unfold>(
    x: &S,
    lx: &Layout,
    dy: &S,
    ldy: &Layout,
    g: &Geometry,
) -> Result<S> {
    let (rows, k) = (g.b * g.pixels(), g.k());
    if rows == 0 {
        return zeros(x, (g.co, g.c, g.kh, g.kw));
    }
    let cols = x.im2col(lx, g)?;
    let dyr = rows_of(dy, ldy, g)?;
    // dW[co][k] = Σ over b·p of dy[b·p][co] · cols[b·p][k]: one product over the batch.
    let dyt = Layout::contiguous((rows, g.co)).transpose(0, 1)?;
    dyr.matmul(
        &cols,
        (1, g.co, k, rows),
        &dyt,
        &Layout::contiguous((rows, k)),
    )
}

#[cfg(test)]
mod tests {
    //! The composition above on the CPU, with plain loops for the data movement, against the
    //! CPU kernels of `conv.rs` (which the integration tests check against Candle).

    use candle_core::{CpuStorage, DType, Device, Tensor, WithDType};

    use super::*;
    use crate::conv::Params;

    fn geometry(g: &Geometry, i: usize) -> [usize; 6] {
        // (b, oy, ox) and (c, i, j) of entry `i` of the unfolded input.
        let k = g.k();
        let (row, t) = (i / k, i % k);
        [
            row / g.pixels(),
            row / g.ow % g.oh,
            row % g.ow,
            t / (g.kh * g.kw),
            t / g.kw % g.kh,
            t % g.kw,
        ]
    }

    fn im2col<T: WithDType>(x: &[T], l: &Layout, g: &Geometry) -> Vec<T> {
        let s = l.stride();
        let lead = g.c - g.xc();
        (0..g.b * g.pixels() * g.k())
            .map(|e| {
                let [b, oy, ox, c, i, j] = geometry(g, e);
                match (g.source(oy, i, g.h), g.source(ox, j, g.w), g.p.time) {
                    (Some(_), Some(_), Some(t)) if c == 0 => T::from_f64(t),
                    (Some(y), Some(x_), _) => {
                        let c = c - lead;
                        x[l.start_offset() + b * s[0] + c * s[1] + y * s[2] + x_ * s[3]]
                    }
                    _ => T::zero(),
                }
            })
            .collect()
    }

    fn col2im<T: WithDType>(dcols: &[T], g: &Geometry) -> Vec<T> {
        let (xc, lead) = (g.xc(), g.c - g.xc());
        let mut dx = vec![T::zero(); g.b * xc * g.h * g.w];
        for (e, v) in dcols.iter().enumerate() {
            let [b, oy, ox, c, i, j] = geometry(g, e);
            if let (Some(y), Some(x), Some(c)) = (
                g.source(oy, i, g.h),
                g.source(ox, j, g.w),
                c.checked_sub(lead),
            ) {
                dx[((b * xc + c) * g.h + y) * g.w + x] += *v;
            }
        }
        dx
    }

    fn rows_to_nchw<T: WithDType>(rows: &[T], bias: Option<&[T]>, g: &Geometry) -> Vec<T> {
        let p = g.pixels();
        (0..g.b * g.co * p)
            .map(|e| {
                let (b, o, q) = (e / (g.co * p), e / p % g.co, e % p);
                let v = rows[(b * p + q) * g.co + o];
                bias.map_or(v, |bias| v + bias[o])
            })
            .collect()
    }

    impl Unfold for CpuStorage {
        fn im2col(&self, l: &Layout, g: &Geometry) -> Result<Self> {
            Ok(match self {
                CpuStorage::F32(x) => CpuStorage::F32(im2col(x, l, g)),
                CpuStorage::F64(x) => CpuStorage::F64(im2col(x, l, g)),
                _ => candle_core::bail!("im2col: {:?}", self.dtype()),
            })
        }

        fn col2im(&self, g: &Geometry) -> Result<Self> {
            Ok(match self {
                CpuStorage::F32(v) => CpuStorage::F32(col2im(v, g)),
                CpuStorage::F64(v) => CpuStorage::F64(col2im(v, g)),
                _ => candle_core::bail!("col2im: {:?}", self.dtype()),
            })
        }

        fn rows_to_nchw(&self, bias: Option<(&Self, &Layout)>, g: &Geometry) -> Result<Self> {
            let tail = |l: &Layout| l.start_offset()..l.start_offset() + g.co;
            Ok(match (self, bias) {
                (CpuStorage::F32(v), None) => CpuStorage::F32(rows_to_nchw(v, None, g)),
                (CpuStorage::F64(v), None) => CpuStorage::F64(rows_to_nchw(v, None, g)),
                (CpuStorage::F32(v), Some((CpuStorage::F32(b), l))) => {
                    CpuStorage::F32(rows_to_nchw(v, Some(&b[tail(l)]), g))
                }
                (CpuStorage::F64(v), Some((CpuStorage::F64(b), l))) => {
                    CpuStorage::F64(rows_to_nchw(v, Some(&b[tail(l)]), g))
                }
                _ => candle_core::bail!("rows_to_nchw: {:?}", self.dtype()),
            })
        }
    }

    fn cpu(t: &Tensor) -> (CpuStorage, Layout) {
        let (s, l) = t.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(s) => (s.clone(), l.clone()),
            _ => unreachable!("a CPU tensor"),
        }
    }

    fn tensor(s: CpuStorage, shape: &[usize]) -> Tensor {
        let t = match s {
            CpuStorage::F32(v) => Tensor::from_vec(v, shape, &Device::Cpu),
            CpuStorage::F64(v) => Tensor::from_vec(v, shape, &Device::Cpu),
            _ => unreachable!("f32 or f64"),
        };
        t.unwrap()
    }

    /// `max |a − b| / max |b|`.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let (a, b) = (a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        d / b.iter().map(|y| y.abs()).fold(f64::MIN_POSITIVE, f64::max)
    }

    /// Forward (with and without bias), input and kernel gradients: the composition on the
    /// CPU against the CPU kernels, on the ODE-Net's geometries, strides, dilation, padding
    /// beyond the kernel, 1×1, an empty batch, and strided input, kernel and gradient; each
    /// without and with a time channel (`conv2d_time`).
    #[test]
    fn matches_the_cpu_kernels() {
        // (x, kernel, padding, stride, dilation)
        type Case = ([usize; 4], [usize; 4], usize, usize, usize);
        let cases: &[Case] = &[
            ([3, 65, 6, 6], [64, 65, 3, 3], 1, 1, 1),
            ([2, 8, 26, 26], [8, 8, 4, 4], 1, 2, 1),
            ([2, 1, 28, 28], [8, 1, 3, 3], 0, 1, 1),
            ([1, 2, 9, 11], [3, 2, 3, 3], 1, 3, 2),
            ([1, 3, 7, 5], [5, 3, 3, 2], 2, 1, 1),
            ([4, 5, 5, 5], [7, 5, 1, 1], 0, 1, 1),
            ([0, 3, 5, 5], [4, 3, 3, 3], 1, 1, 1),
        ];
        let all = [DType::F32, DType::F64]
            .into_iter()
            .flat_map(|d| [(d, None), (d, Some(0.625))]);
        let seed = std::cell::Cell::new(1u64);
        for (dtype, time) in all {
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            for (i, &(xd, kd, padding, stride, dilation)) in cases.iter().enumerate() {
                let p = Params {
                    padding,
                    stride,
                    dilation,
                    time,
                };
                let kd = [kd[0], kd[1] + usize::from(time.is_some()), kd[2], kd[3]];
                let g = Geometry::new(&xd, &kd, p).unwrap();
                let randn = |d: &[usize]| {
                    // Seeded (SplitMix64, uniform in ±√3: unit variance), the same on every
                    // run: Candle's CPU generator cannot be seeded.
                    let v: Vec<f64> = (0..d.iter().product::<usize>())
                        .map(|_| {
                            let mut z = seed.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                            seed.set(z);
                            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
                            3f64.sqrt() * (2.0 * u - 1.0)
                        })
                        .collect();
                    Tensor::from_vec(v, d, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                // Every other case strided: x stored with H and W swapped, the kernel with its
                // taps swapped, the gradient narrowed from a larger batch.
                let strided = i % 2 == 1;
                let swap = |d: [usize; 4]| {
                    if strided {
                        randn(&[d[0], d[1], d[3], d[2]]).transpose(2, 3).unwrap()
                    } else {
                        randn(&d)
                    }
                };
                let (x, w, bias) = (swap(xd), swap(kd), randn(&[kd[0]]));
                let out = [g.b, g.co, g.oh, g.ow];
                let dy = if strided {
                    randn(&[g.b + 2, g.co, g.oh, g.ow])
                        .narrow(0, 1, g.b)
                        .unwrap()
                } else {
                    randn(&out)
                };
                assert_eq!(x.is_contiguous(), !strided);
                let ((xs, xl), (ws, wl), (bs, bl), (dys, dyl)) =
                    (cpu(&x), cpu(&w), cpu(&bias), cpu(&dy));
                let what = format!("x {xd:?} k {kd:?} {dtype:?} time {time:?}");

                let conv = |bias| match time {
                    Some(t) => crate::conv2d_time(&x, t, &w, bias, padding, stride, dilation),
                    None => match bias {
                        Some(b) => crate::conv2d_bias(&x, &w, b, padding, stride, dilation, 1),
                        None => crate::conv2d(&x, &w, padding, stride, dilation, 1),
                    },
                };
                let want = conv(None).unwrap();
                let got = tensor(forward(&xs, &xl, &ws, &wl, None, &g).unwrap(), &out);
                assert!(rel(&got, &want) < tol, "{what}: forward");
                let want = conv(Some(&bias)).unwrap();
                let got = forward(&xs, &xl, &ws, &wl, Some((&bs, &bl)), &g).unwrap();
                assert!(
                    rel(&tensor(got, &out), &want) < tol,
                    "{what}: forward with bias"
                );

                let params = p;
                let (dx, dw) = (
                    dy.apply_op2_no_bwd(
                        &w,
                        &crate::conv::BackwardInput {
                            params,
                            x_dims: x.dims4().unwrap(),
                        },
                    )
                    .unwrap(),
                    x.apply_op2_no_bwd(
                        &dy,
                        &crate::conv::BackwardKernel {
                            params,
                            k_dims: w.dims4().unwrap(),
                        },
                    )
                    .unwrap(),
                );
                let got = backward_input(&dys, &dyl, &ws, &wl, &g).unwrap();
                assert!(rel(&tensor(got, &xd), &dx) < tol, "{what}: dx");
                let got = backward_kernel(&xs, &xl, &dys, &dyl, &g).unwrap();
                assert!(rel(&tensor(got, &kd), &dw) < tol, "{what}: dw");
            }
        }
    }
}
