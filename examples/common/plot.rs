//! A minimal line plotter writing PNG: panels of lines and dots, no text. Enough to look at a
//! trajectory without pulling a plotting stack into the build (included with `#[path]`).
#![allow(dead_code)]

use anyhow::{Context, Result};
use std::path::Path;

pub type Rgb = [u8; 3];
pub const TRUE_COLOR: Rgb = [31, 119, 180]; // blue
pub const LEARNED_COLOR: Rgb = [255, 127, 14]; // orange
const AXIS: Rgb = [160, 160, 160];

pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

/// A rectangle of the canvas with data bounds mapped onto it.
pub struct Panel {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
    pub xlim: (f64, f64),
    pub ylim: (f64, f64),
}

impl Panel {
    fn to_px(&self, x: f64, y: f64) -> (f64, f64) {
        let fx = (x - self.xlim.0) / (self.xlim.1 - self.xlim.0);
        let fy = (y - self.ylim.0) / (self.ylim.1 - self.ylim.0);
        (
            self.x0 as f64 + fx * self.w as f64,
            (self.y0 + self.h) as f64 - fy * self.h as f64,
        )
    }
}

/// Bounds of a set of values with a 5% margin.
pub fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        if v.is_finite() {
            (lo.min(v), hi.max(v))
        } else {
            (lo, hi)
        }
    });
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// A square panel at `(x0, y0)`, `size` pixels wide, with equal scales on both axes, holding
/// every point of `xs` and `ys`.
pub fn square_panel(
    x0: usize,
    y0: usize,
    size: usize,
    xs: impl Iterator<Item = f64>,
    ys: impl Iterator<Item = f64>,
) -> Panel {
    let (xlo, xhi) = bounds(xs);
    let (ylo, yhi) = bounds(ys);
    let half = (xhi - xlo).max(yhi - ylo) / 2.0;
    let (xm, ym) = ((xlo + xhi) / 2.0, (ylo + yhi) / 2.0);
    Panel {
        x0,
        y0,
        w: size,
        h: size,
        xlim: (xm - half, xm + half),
        ylim: (ym - half, ym + half),
    }
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    fn put(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A 2-pixel-wide line (DDA).
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).clamp(1, 100_000);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                self.put(x as i64 + dx, y as i64 + dy, c);
            }
        }
    }

    pub fn frame(&mut self, p: &Panel) {
        let (l, t, r, b) = (
            p.x0 as f64,
            p.y0 as f64,
            (p.x0 + p.w) as f64,
            (p.y0 + p.h) as f64,
        );
        self.line((l, t), (r, t), AXIS);
        self.line((r, t), (r, b), AXIS);
        self.line((r, b), (l, b), AXIS);
        self.line((l, b), (l, t), AXIS);
        // Zero lines where they fall inside the panel.
        if p.ylim.0 < 0.0 && p.ylim.1 > 0.0 {
            let (_, y) = p.to_px(0.0, 0.0);
            self.line((l, y), (r, y), [220, 220, 220]);
        }
        if p.xlim.0 < 0.0 && p.xlim.1 > 0.0 {
            let (x, _) = p.to_px(0.0, 0.0);
            self.line((x, t), (x, b), [220, 220, 220]);
        }
    }

    /// A polyline through `(xs[i], ys[i])`; non-finite points break the line.
    pub fn series(&mut self, p: &Panel, xs: &[f64], ys: &[f64], c: Rgb) {
        for i in 1..xs.len().min(ys.len()) {
            if [xs[i - 1], ys[i - 1], xs[i], ys[i]]
                .iter()
                .all(|v| v.is_finite())
            {
                self.line(p.to_px(xs[i - 1], ys[i - 1]), p.to_px(xs[i], ys[i]), c);
            }
        }
    }

    /// A 3×3 dot at `(x, y)`.
    pub fn dot(&mut self, p: &Panel, x: f64, y: f64, c: Rgb) {
        let (px, py) = p.to_px(x, y);
        for dx in -1..=1 {
            for dy in -1..=1 {
                self.put(px as i64 + dx, py as i64 + dy, c);
            }
        }
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.pixels)?;
        w.finish()?;
        Ok(())
    }
}
