//! The reaction–diffusion pieces: `Diffusion1d` against the Brusselator's diffusion, its
//! Jacobians in closed form against differences, its stiffness against the eigenvalues;
//! `Diffusion2d` against the five-point stencil written out (square and rectangular grids),
//! its eigenvectors and stiffness,
//! and solved by rkc against the exact solution;
//! `PointwiseReaction` acts point by point; a split solve with the network explicit; errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::max_abs;
use node_adjoint::ParamVectorField;
use node_models::{init, Activation, Diffusion1d, Diffusion2d, PointwiseReaction, Rng};
use node_solvers::problems::Brusselator;
use node_solvers::{odeint, Jacobian, Method, SolveOptions, Split, VectorField};

fn diffusion_case(dev: &Device) -> Result<()> {
    let n = 16;
    let p = Brusselator::new(n);
    let d = Diffusion1d::new(n, &[p.alpha, p.alpha], &[1.0, 3.0])?;
    let y = p.initial(DType::F64, dev)?;
    let y = (&y + y.sin()?.affine(0.3, 0.0)?)?;
    // The Brusselator's diffusion, as node-solvers' test problem has it.
    let want = p.diffusion()(0.0, &y)?;
    let got = d.eval(0.0, &y)?;
    assert!(max_abs(&(got - &want)?)? < 1e-12);
    // A batch is each of its systems.
    let batch = Tensor::stack(&[&y, &y.affine(0.5, 1.0)?], 0)?;
    let out = d.eval(0.0, &batch)?;
    for b in 0..2 {
        let one = d.eval(0.0, &batch.get(b)?)?;
        assert!(max_abs(&(out.get(b)? - one)?)? == 0.0);
    }
    // The Brusselator's reaction, which the trainer's data come from, acts on a batch too.
    let reactions = p.reaction()(0.0, &batch)?;
    for b in 0..2 {
        let one = p.reaction()(0.0, &batch.get(b)?)?;
        assert!(max_abs(&(reactions.get(b)? - one)?)? == 0.0);
    }
    // The Jacobians: the Brusselator's diffusion Jacobian (dense), and central differences of
    // the batch, block by block.
    let dense = d.jacobian(0.0, &y, Jacobian::Dense)?.expect("dense");
    let want = p.diffusion_jacobian()(0.0, &y)?;
    assert!(max_abs(&(dense - want)?)? < 1e-12);
    let blocks = d
        .jacobian(0.0, &batch, Jacobian::Batched)?
        .expect("batched");
    assert_eq!(blocks.dims(), &[2, 2 * n, 2 * n]);
    let whole = d.jacobian(0.0, &batch, Jacobian::Dense)?.expect("dense");
    assert_eq!(whole.dims(), &[4 * n, 4 * n]);
    let h = 1e-6;
    let flat = batch.flatten_all()?.to_vec1::<f64>()?;
    for col in [0, 5, 2 * n - 1, 2 * n, 3 * n + 7] {
        let bump = |s: f64| -> Result<Tensor> {
            let mut v = flat.clone();
            v[col] += s;
            let yb = Tensor::from_vec(v, batch.shape(), dev)?;
            Ok(d.eval(0.0, &yb)?.flatten_all()?)
        };
        let fd = ((bump(h)? - bump(-h)?)? / (2.0 * h))?;
        let column = whole.narrow(1, col, 1)?.squeeze(1)?;
        // Affine: the differences are exact up to rounding of values of size (N+1)²·y.
        assert!(max_abs(&(&column - &fd)?)? < 1e-6, "column {col}");
        let (b, c) = (col / (2 * n), col % (2 * n));
        let block_col = blocks.get(b)?.narrow(1, c, 1)?.squeeze(1)?;
        let fd_block = fd.narrow(0, b * 2 * n, 2 * n)?;
        assert!(
            max_abs(&(block_col - fd_block)?)? < 1e-6,
            "block column {col}"
        );
    }
    // The stiffness is the largest eigenvalue's magnitude: 2s on one point, 3s on two.
    for (points, factor) in [(1usize, 2.0), (2, 3.0)] {
        let s = 0.5 * ((points + 1) * (points + 1)) as f64;
        let d = Diffusion1d::new(points, &[0.5, 0.1], &[0.0, 0.0])?;
        assert!((d.stiffness() - factor * s).abs() < 1e-12 * s);
    }
    assert!(d.stiffness() < 4.0 * p.alpha * 17.0 * 17.0);
    Ok(())
}

fn periodic_case(dev: &Device) -> Result<()> {
    // On a periodic grid of N points the neighbours wrap around: against the rolled state.
    let n = 10;
    let d = Diffusion1d::periodic(n, &[0.3, 0.05])?;
    let y = Rng::new(601).normal_tensor(&[3, 2, n], 0.0, 1.0, DType::F64, dev)?;
    let left = Tensor::cat(&[y.narrow(2, n - 1, 1)?, y.narrow(2, 0, n - 1)?], 2)?;
    let right = Tensor::cat(&[y.narrow(2, 1, n - 1)?, y.narrow(2, 0, 1)?], 2)?;
    let scale = Tensor::new(&[[0.3 * 100.0], [0.05 * 100.0]], dev)?;
    let want = ((left + right)? - y.affine(2.0, 0.0)?)?.broadcast_mul(&scale)?;
    let got = d.eval(0.0, &y)?;
    assert!(max_abs(&(&got - &want)?)? < 1e-12);
    // Each channel's sum is conserved: the field sums to zero along the grid.
    assert!(max_abs(&got.sum(2)?)? < 1e-12);
    // The Jacobians against central differences (affine: exact up to rounding).
    let blocks = d.jacobian(0.0, &y, Jacobian::Batched)?.expect("batched");
    let flat = y.flatten_all()?.to_vec1::<f64>()?;
    let h = 1e-6;
    for col in [0, n - 1, n, 2 * n + 3, 5 * n + 9] {
        let bump = |s: f64| -> Result<Tensor> {
            let mut v = flat.clone();
            v[col] += s;
            Ok(d.eval(0.0, &Tensor::from_vec(v, y.shape(), dev)?)?
                .flatten_all()?)
        };
        let fd = ((bump(h)? - bump(-h)?)? / (2.0 * h))?;
        let (b, c) = (col / (2 * n), col % (2 * n));
        let block_col = blocks.get(b)?.narrow(1, c, 1)?.squeeze(1)?;
        let fd_block = fd.narrow(0, b * 2 * n, 2 * n)?;
        assert!(max_abs(&(block_col - fd_block)?)? < 1e-6, "column {col}");
    }
    // The stiffness is the largest eigenvalue's magnitude: 0 on one point, 4s on two (the
    // other point twice), 3s on three.
    for (points, factor) in [(1usize, 0.0), (2, 4.0), (3, 3.0)] {
        let s = 0.5 * (points * points) as f64;
        let d = Diffusion1d::periodic(points, &[0.5])?;
        assert!(
            (d.stiffness() - factor * s).abs() < 1e-12 * s.max(1.0),
            "{points}"
        );
        let one = Tensor::new(&[1.0f64, 2.0, 4.0][..points], dev)?.unsqueeze(0)?;
        let jac = d.jacobian(0.0, &one, Jacobian::Dense)?.expect("dense");
        assert!(
            max_abs(&jac.sum(1)?)? < 1e-12,
            "rows sum to zero on {points}"
        );
    }
    // A solve conserves the sums.
    let opts = SolveOptions::default()
        .method(Method::KenCarp4)
        .tolerances(1e-8, 1e-8)
        .jacobian(Jacobian::Batched);
    let sol = odeint(&d, &y, &[0.0, 0.5], &opts)?;
    let drift = (sol.last()?.sum(2)? - y.sum(2)?)?;
    assert!(max_abs(&drift)? < 1e-10);
    assert!(Diffusion1d::periodic(0, &[1.0]).is_err());
    assert!(Diffusion1d::periodic(4, &[f64::INFINITY]).is_err());
    Ok(())
}

fn reaction_case(dev: &Device) -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let r = PointwiseReaction::new(&[1.0, 3.0], 16, 2, Activation::Tanh, vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(604))?;
    assert_eq!(r.params().len(), 6, "three layers' weights and biases");
    let y = Rng::new(602).normal_tensor(&[3, 2, 7], 0.0, 1.0, DType::F64, dev)?;
    let out = r.eval(0.0, &y)?;
    assert_eq!(out.dims(), y.dims());
    // Point by point: permuting the grid points permutes the output; each point's output
    // depends on its own channels only; a batch is each of its systems.
    let perm = Tensor::new(&[6u32, 2, 0, 1, 5, 3, 4], dev)?;
    let permuted = r.eval(0.0, &y.index_select(&perm, 2)?)?;
    assert!(max_abs(&(permuted - out.index_select(&perm, 2)?)?)? < 1e-14);
    let single = r.eval(0.0, &y.get(1)?)?;
    assert!(max_abs(&(single - out.get(1)?)?)? < 1e-14);
    let point = y.narrow(2, 3, 1)?;
    let alone = r.eval(0.0, &point)?;
    assert!(max_abs(&(alone - out.narrow(2, 3, 1)?)?)? < 1e-14);
    // Errors: a state with other channels, a bad network.
    let bad = r.eval(0.0, &Tensor::zeros((3, 7), DType::F64, dev)?);
    assert!(bad.unwrap_err().to_string().contains("[2, N] or [B, 2, N]"));
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    assert!(PointwiseReaction::new(&[], 16, 2, Activation::Tanh, vb.pp("x")).is_err());
    assert!(PointwiseReaction::new(&[f64::NAN], 16, 2, Activation::Tanh, vb.pp("y")).is_err());
    assert!(Diffusion1d::new(0, &[1.0], &[0.0]).is_err());
    assert!(Diffusion1d::new(4, &[1.0, 2.0], &[0.0]).is_err());
    assert!(Diffusion1d::new(4, &[-1.0], &[0.0]).is_err());
    let d = Diffusion1d::new(4, &[1.0], &[0.0])?;
    let err = d
        .eval(0.0, &Tensor::zeros((2, 4), DType::F64, dev)?)
        .unwrap_err();
    assert!(err.to_string().contains("[1, 4] or [B, 1, 4]"), "{err}");
    Ok(())
}

fn split_solve_case(dev: &Device) -> Result<()> {
    // The network explicit, the diffusion implicit with its batched Jacobian: a KenCarp4
    // solve of a batch agrees with a tight dopri5 solve of the sum, builds the diffusion's
    // Jacobian once, and evaluates the network once per stage.
    let n = 24;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let r = PointwiseReaction::new(&[1.0, 3.0], 8, 1, Activation::Tanh, vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(605))?;
    let d = Diffusion1d::new(n, &[0.02, 0.02], &[1.0, 3.0])?;
    let p = Brusselator::new(n);
    let y0 = Tensor::stack(
        &[
            p.initial(DType::F64, dev)?,
            p.initial(DType::F64, dev)?.affine(0.9, 0.2)?,
        ],
        0,
    )?
    .detach();
    let f = Split::new(|t: f64, y: &Tensor| Ok(r.eval(t, y)?.detach()), d.clone());
    let ts = [0.0, 0.5, 1.0];
    let opts = SolveOptions::default()
        .method(Method::KenCarp4)
        .tolerances(1e-7, 1e-7)
        .jacobian(Jacobian::Batched);
    let sol = odeint(&f, &y0, &ts, &opts)?;
    let whole = |t: f64, y: &Tensor| f.eval(t, y);
    let reference = odeint(
        &whole,
        &y0,
        &ts,
        &SolveOptions::default().tolerances(1e-11, 1e-11),
    )?;
    let err = max_abs(&(&sol.ys - &reference.ys)?)?;
    assert!(err < 1e-5, "error {err:e}");
    assert_eq!(sol.stats.jacobians, 1);
    let tried = sol.stats.accepted_steps + sol.stats.rejected_steps;
    assert!(sol.stats.explicit_nfe <= 6 * tried + 2, "{:?}", sol.stats);
    Ok(())
}

/// The five-point Laplacian of one channel on a `rows × cols` grid, written out: `ends` the
/// value all round, or `None` for a periodic grid; `(sy, sx)` the scales `D/Δy²`, `D/Δx²`.
fn stencil(
    u: &[f64],
    (rows, cols): (usize, usize),
    ends: Option<f64>,
    (sy, sx): (f64, f64),
) -> Vec<f64> {
    let at = |i: isize, j: isize| -> f64 {
        let inside = (0..rows as isize).contains(&i) && (0..cols as isize).contains(&j);
        match ends {
            Some(e) if !inside => e,
            _ => {
                let (i, j) = (i.rem_euclid(rows as isize), j.rem_euclid(cols as isize));
                u[i as usize * cols + j as usize]
            }
        }
    };
    (0..rows * cols)
        .map(|k| {
            let (i, j) = ((k / cols) as isize, (k % cols) as isize);
            sy * (at(i - 1, j) - 2.0 * at(i, j) + at(i + 1, j))
                + sx * (at(i, j - 1) - 2.0 * at(i, j) + at(i, j + 1))
        })
        .collect()
}

fn diffusion_2d_case(dev: &Device) -> Result<()> {
    let (dc, ends) = ([0.3, 0.05], [1.0, 3.0]);
    // Square and rectangular grids, fixed values all round and periodic.
    for (rows, cols) in [(7, 7), (5, 8)] {
        let y = Rng::new(603).normal_tensor(&[3, 2, rows * cols], 0.0, 1.0, DType::F64, dev)?;
        for periodic in [false, true] {
            let d = match (periodic, rows == cols) {
                (true, true) => Diffusion2d::periodic(rows, &dc)?,
                (true, false) => Diffusion2d::periodic_rectangular(rows, cols, &dc)?,
                (false, true) => Diffusion2d::new(rows, &dc, &ends)?,
                (false, false) => Diffusion2d::rectangular(rows, cols, &dc, &ends)?,
            };
            assert_eq!(d.shape(), (rows, cols));
            assert_eq!((d.points(), d.channels()), (rows * cols, 2));
            let inv_sq = |points: usize| {
                let n = if periodic { points } else { points + 1 } as f64;
                n * n
            };
            let out = d.eval(0.0, &y)?;
            assert_eq!(out.dims(), y.dims());
            for b in 0..3 {
                // A batch is each of its systems.
                let one = d.eval(0.0, &y.get(b)?)?;
                assert!(max_abs(&(one - out.get(b)?)?)? == 0.0);
                for c in 0..2 {
                    let u = y.get(b)?.get(c)?.to_vec1::<f64>()?;
                    let end = (!periodic).then_some(ends[c]);
                    let scales = (dc[c] * inv_sq(rows), dc[c] * inv_sq(cols));
                    let want = stencil(&u, (rows, cols), end, scales);
                    let got = out.get(b)?.get(c)?.to_vec1::<f64>()?;
                    let e = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        e < 1e-12,
                        "{rows} × {cols}, periodic {periodic}, batch {b}, channel {c}: {e:e}"
                    );
                }
            }
            // Periodic: sums conserved, pointwise.
            if periodic {
                assert!(max_abs(&out.sum(2)?)? < 1e-12);
            }
        }
    }
    // Zero ends: sin(kπy) sin(lπx) is an eigenvector, the top one's eigenvalue the stiffness.
    let (rows, cols) = (5, 9);
    let d = Diffusion2d::rectangular(rows, cols, &[0.3], &[0.0])?;
    let (hy, hx) = (1.0 / (rows + 1) as f64, 1.0 / (cols + 1) as f64);
    let mode = |k: usize, l: usize| -> Result<Tensor> {
        let v: Vec<f64> = (0..rows * cols)
            .map(|p| {
                let (i, j) = ((p / cols + 1) as f64, (p % cols + 1) as f64);
                (k as f64 * std::f64::consts::PI * i * hy).sin()
                    * (l as f64 * std::f64::consts::PI * j * hx).sin()
            })
            .collect();
        Ok(Tensor::from_vec(v, (1, rows * cols), dev)?)
    };
    let eigen = |k: usize, h: f64| {
        -4.0 * 0.3 / (h * h) * (k as f64 * std::f64::consts::PI * h / 2.0).sin().powi(2)
    };
    for (k, l) in [(1, 1), (2, 5), (rows, cols)] {
        let v = mode(k, l)?;
        let lambda = eigen(k, hy) + eigen(l, hx);
        let r = (d.eval(0.0, &v)? - v.affine(lambda, 0.0)?)?;
        assert!(max_abs(&r)? < 1e-10, "mode ({k}, {l})");
    }
    let top = -(eigen(rows, hy) + eigen(cols, hx));
    assert!((d.stiffness() - top).abs() < 1e-9 * top);
    // Solved by rkc (no Jacobian needed) with the stiffness as the spectral radius: modes
    // (1, 1) and (n, n) decay as they should.
    let side = 24;
    let d = Diffusion2d::new(side, &[0.3], &[0.0])?;
    let h = 1.0 / (side + 1) as f64;
    let smooth: Vec<f64> = (0..side * side)
        .map(|p| {
            let (i, j) = ((p / side + 1) as f64, (p % side + 1) as f64);
            (std::f64::consts::PI * i * h).sin() * (std::f64::consts::PI * j * h).sin()
        })
        .collect();
    let y0 = Tensor::from_vec(smooth, (1, side * side), dev)?;
    let opts = SolveOptions::default()
        .method(Method::Rkc)
        .tolerances(1e-8, 1e-8)
        .spectral_radius(d.stiffness());
    let sol = odeint(&d, &y0, &[0.0, 0.2], &opts)?;
    let lambda = -8.0 * 0.3 / (h * h) * (std::f64::consts::PI * h / 2.0).sin().powi(2);
    let want = y0.affine((lambda * 0.2).exp(), 0.0)?;
    let e = max_abs(&(sol.last()? - want)?)?;
    assert!(e < 1e-5, "rkc on the 2-D grid: {e:e}, {:?}", sol.stats);
    // Errors: a state of another grid or channel count; bad coefficients.
    let err = d
        .eval(0.0, &Tensor::zeros((1, 23 * 23), DType::F64, dev)?)
        .unwrap_err();
    assert!(err.to_string().contains("24 × 24"), "{err}");
    assert!(Diffusion2d::new(0, &[1.0], &[0.0]).is_err());
    assert!(Diffusion2d::rectangular(3, 0, &[1.0], &[0.0]).is_err());
    assert!(Diffusion2d::periodic(4, &[-1.0]).is_err());
    let err = Diffusion2d::rectangular(3, 4, &[1.0], &[0.0])?
        .eval(0.0, &Tensor::zeros((1, 4 * 3 + 1), DType::F64, dev)?)
        .unwrap_err();
    assert!(err.to_string().contains("3 × 4"), "{err}");
    Ok(())
}

candle_core::test_device!(
    diffusion_case,
    diffusion_cpu,
    diffusion_cuda,
    diffusion_metal
);
candle_core::test_device!(periodic_case, periodic_cpu, periodic_cuda, periodic_metal);
candle_core::test_device!(reaction_case, reaction_cpu, reaction_cuda, reaction_metal);
candle_core::test_device!(
    split_solve_case,
    split_solve_cpu,
    split_solve_cuda,
    split_solve_metal
);
candle_core::test_device!(
    diffusion_2d_case,
    diffusion_2d_cpu,
    diffusion_2d_cuda,
    diffusion_2d_metal
);
