//! FFJORD's toy densities: shapes, seeds, and the structure each one claims.

use anyhow::{ensure, Result};
use candle_core::{DType, Device};
use node_models::toy::Toy;
use node_models::Rng;

fn points(toy: Toy, n: usize, seed: u64) -> Result<Vec<[f64; 2]>> {
    let t = toy.sample(n, &mut Rng::new(seed), DType::F64, &Device::Cpu)?;
    ensure!(t.dims() == [n, 2], "{toy:?}: {:?}", t.dims());
    Ok(t.to_vec2::<f64>()?
        .into_iter()
        .map(|p| [p[0], p[1]])
        .collect())
}

fn mean(pts: &[[f64; 2]]) -> [f64; 2] {
    let n = pts.len() as f64;
    [
        pts.iter().map(|p| p[0]).sum::<f64>() / n,
        pts.iter().map(|p| p[1]).sum::<f64>() / n,
    ]
}

#[test]
fn seeded_finite_and_in_the_box() -> Result<()> {
    for toy in Toy::ALL {
        let a = points(toy, 1001, 1)?;
        ensure!(
            a == points(toy, 1001, 1)?,
            "{toy:?}: the same seed, the same points"
        );
        ensure!(
            a != points(toy, 1001, 2)?,
            "{toy:?}: another seed, other points"
        );
        let inside = a
            .iter()
            .filter(|p| p.iter().all(|x| x.is_finite() && x.abs() <= 4.5))
            .count();
        ensure!(inside >= 990, "{toy:?}: {inside} of 1001 in [-4.5, 4.5]²");
    }
    Ok(())
}

#[test]
fn each_density_has_its_shape() -> Result<()> {
    let n = 20000;
    // Circles: half the points near radius 3, half near 1.5 (noise 0.24).
    let radii: Vec<f64> = points(Toy::Circles, n, 3)?
        .iter()
        .map(|p| p[0].hypot(p[1]))
        .collect();
    for r0 in [3.0, 1.5] {
        let near = radii.iter().filter(|r| (*r - r0).abs() < 0.5).count();
        ensure!(near > 9000 && near < 10200, "radius {r0}: {near}");
    }
    // Checkerboard: the cells of side 2 whose indices have an even sum, and no others.
    for p in points(Toy::Checkerboard, n, 4)? {
        let cell = (p[0] / 2.0).floor() + (p[1] / 2.0).floor();
        ensure!(cell.rem_euclid(2.0) == 0.0, "{p:?} on a light square");
    }
    // Eight Gaussians: all eight centres used, each point near one of them.
    let pts = points(Toy::EightGaussians, n, 5)?;
    let mut used = [0usize; 8];
    for p in &pts {
        let k = ((p[1].atan2(p[0]) / (std::f64::consts::PI / 4.0)).round() as i64).rem_euclid(8);
        used[k as usize] += 1;
    }
    ensure!(used.iter().all(|&u| u > 2200 && u < 2800), "{used:?}");
    let r = pts.iter().map(|p| p[0].hypot(p[1])).sum::<f64>() / n as f64;
    ensure!((r - 4.0 / 1.414).abs() < 0.05, "mean radius {r}");
    // Means: moons (0, 0.3) by symmetry of the two arcs; the others 0.
    for (toy, want) in [
        (Toy::Moons, [0.0, 0.3]),
        (Toy::Pinwheel, [0.0, 0.0]),
        (Toy::TwoSpirals, [0.0, 0.0]),
        (Toy::EightGaussians, [0.0, 0.0]),
    ] {
        let m = mean(&points(toy, n, 6)?);
        ensure!(
            (m[0] - want[0]).abs() < 0.05 && (m[1] - want[1]).abs() < 0.05,
            "{toy:?}: mean {m:?}, want {want:?}"
        );
    }
    Ok(())
}
