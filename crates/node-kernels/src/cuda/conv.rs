//! Launchers of `conv.cu`: the data movement of the unfolded convolution on CUDA
//! (`conv/unfolded.rs`; the products between them are Candle's cuBLAS `matmul`).

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDevice, Map1, Map2, WrapErr};
use candle_core::{CudaStorage, Layout, Result, WithDType};

use super::{dtype_name, grid_stride, Source};
use crate::conv::unfolded::Unfold;
use crate::conv::Geometry;

static CONV: Source = Source::new(include_str!("conv.cu"), "conv.cu", "node_kernels_conv");

/// The kernels' by-value parameter `NodeConvGeom`: sizes, padding, stride, dilation, the
/// input's strides (for `im2col`), and the time channel (`conv2d_time`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: u64,
    c: u64,
    h: u64,
    w: u64,
    co: u64,
    kh: u64,
    kw: u64,
    oh: u64,
    ow: u64,
    pad: u64,
    stride: u64,
    dil: u64,
    xs: [u64; 4],
    lead: u64,
    time: f64,
}

// SAFETY: plain data with the C layout of `NodeConvGeom` (17 unsigned 64-bit integers and a
// double); the test below checks its size against the parameter size in the PTX.
unsafe impl DeviceRepr for Geom {}

impl Geom {
    fn new(g: &Geometry, xs: [usize; 4]) -> Self {
        let u = |v: usize| v as u64;
        Self {
            b: u(g.b),
            c: u(g.c),
            h: u(g.h),
            w: u(g.w),
            co: u(g.co),
            kh: u(g.kh),
            kw: u(g.kw),
            oh: u(g.oh),
            ow: u(g.ow),
            pad: u(g.p.padding),
            stride: u(g.p.stride),
            dil: u(g.p.dilation),
            xs: xs.map(u),
            lead: u(usize::from(g.p.time.is_some())),
            time: g.p.time.unwrap_or(0.0),
        }
    }
}

/// Launches `{kernel}_{dtype}(geom, inputs.., out)` over `n` output elements.
fn launch<T: DeviceRepr + WithDType + ValidAsZeroBits>(
    kernel: &str,
    dev: &CudaDevice,
    geom: Geom,
    inputs: &[&CudaView<'_, T>],
    n: usize,
) -> Result<CudaSlice<T>> {
    let (module, ptx) = CONV.module()?;
    let func =
        dev.get_or_load_custom_func(&format!("{kernel}_{}", dtype_name::<T>()?), module, ptx)?;
    // SAFETY: the kernel writes every one of the `n` elements (grid-stride loop).
    let mut out = unsafe { dev.alloc::<T>(n)? };
    if n == 0 {
        return Ok(out);
    }
    let mut builder = func.builder();
    builder.arg(&geom);
    for x in inputs {
        builder.arg(*x);
    }
    builder.arg(&mut out);
    // SAFETY: the arguments match the kernel's signature; the views cover what it reads.
    unsafe { builder.launch(grid_stride(n)) }.w()?;
    Ok(out)
}

/// `[B·P][K]` → the start of a contiguous layout of `len` elements, or an error.
fn contiguous_start(l: &Layout, len: usize, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == len => Ok(a),
        _ => candle_core::bail!("conv2d (CUDA): {what} must be {len} contiguous elements"),
    }
}

struct Im2Col<'a>(&'a Geometry);

impl Map1 for Im2Col<'_> {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        x: &CudaSlice<T>,
        dev: &CudaDevice,
        l: &Layout,
    ) -> Result<CudaSlice<T>> {
        let g = self.0;
        let (&[s0, s1, s2, s3], true) = (l.stride(), l.dims() == [g.b, g.xc(), g.h, g.w]) else {
            candle_core::bail!("conv2d (CUDA): input {:?} for {g:?}", l.dims());
        };
        let x = x.slice(l.start_offset()..);
        let n = g.b * g.pixels() * g.k();
        launch("node_im2col", dev, Geom::new(g, [s0, s1, s2, s3]), &[&x], n)
    }
}

struct Col2Im<'a>(&'a Geometry);

impl Map1 for Col2Im<'_> {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        dcols: &CudaSlice<T>,
        dev: &CudaDevice,
        l: &Layout,
    ) -> Result<CudaSlice<T>> {
        let g = self.0;
        let a = contiguous_start(l, g.b * g.pixels() * g.k(), "unfolded gradient")?;
        let dcols = dcols.slice(a..);
        let n = g.b * g.xc() * g.h * g.w;
        launch("node_col2im", dev, Geom::new(g, [0; 4]), &[&dcols], n)
    }
}

struct RowsToNchw<'a>(&'a Geometry);

impl RowsToNchw<'_> {
    fn rows<'s, T>(&self, rows: &'s CudaSlice<T>, l: &Layout) -> Result<CudaView<'s, T>> {
        let a = contiguous_start(l, self.0.b * self.0.pixels() * self.0.co, "product")?;
        Ok(rows.slice(a..))
    }
}

impl Map1 for RowsToNchw<'_> {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        rows: &CudaSlice<T>,
        dev: &CudaDevice,
        l: &Layout,
    ) -> Result<CudaSlice<T>> {
        let g = self.0;
        let rows = self.rows(rows, l)?;
        let n = g.b * g.co * g.pixels();
        launch("node_rows_to_nchw", dev, Geom::new(g, [0; 4]), &[&rows], n)
    }
}

impl Map2 for RowsToNchw<'_> {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        rows: &CudaSlice<T>,
        l: &Layout,
        bias: &CudaSlice<T>,
        lb: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let g = self.0;
        let rows = self.rows(rows, l)?;
        let bias = bias.slice(contiguous_start(lb, g.co, "bias")?..);
        let n = g.b * g.co * g.pixels();
        let geom = Geom::new(g, [0; 4]);
        launch("node_rows_to_nchw_bias", dev, geom, &[&rows, &bias], n)
    }
}

impl Unfold for CudaStorage {
    fn im2col(&self, l: &Layout, g: &Geometry) -> Result<Self> {
        let slice = Im2Col(g).map(&self.slice, &self.device, l)?;
        Ok(Self {
            slice,
            device: self.device.clone(),
        })
    }

    fn col2im(&self, g: &Geometry) -> Result<Self> {
        let l = Layout::contiguous((g.b * g.pixels(), g.k()));
        let slice = Col2Im(g).map(&self.slice, &self.device, &l)?;
        Ok(Self {
            slice,
            device: self.device.clone(),
        })
    }

    fn rows_to_nchw(&self, bias: Option<(&Self, &Layout)>, g: &Geometry) -> Result<Self> {
        let l = Layout::contiguous((g.b * g.pixels(), g.co));
        let slice = match bias {
            None => Map1::map(&RowsToNchw(g), &self.slice, &self.device, &l)?,
            Some((b, lb)) => {
                Map2::map(&RowsToNchw(g), &self.slice, &l, &b.slice, lb, &self.device)?
            }
        };
        Ok(Self {
            slice,
            device: self.device.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: the source compiles, every kernel the launchers name is there, and
    /// the by-value geometry has the size the PTX expects (18 × 8 bytes).
    #[test]
    fn source_compiles_with_nvrtc() {
        let ptx = CONV.ptx().unwrap();
        assert_eq!(std::mem::size_of::<Geom>(), 144);
        for dt in ["f32", "f64"] {
            for k in [
                "node_im2col",
                "node_col2im",
                "node_rows_to_nchw",
                "node_rows_to_nchw_bias",
            ] {
                let entry = format!(".entry {k}_{dt}(");
                let at = ptx
                    .find(&entry)
                    .unwrap_or_else(|| panic!("{k}_{dt} missing"));
                // The first parameter: `.param .align 8 .b8 {k}_{dt}_param_0[144]`.
                let head = &ptx[at..at + 400];
                assert!(
                    head.contains(&format!("{k}_{dt}_param_0[144]")),
                    "{k}_{dt}: {head}"
                );
            }
        }
    }
}
