//! Every tableau satisfies the consistency conditions, and method names round-trip.

use node_solvers::{Method, SolveOptions};

#[test]
fn tableaus_are_consistent() {
    for m in Method::RUNGE_KUTTA {
        let tab = m.tableau().unwrap();
        // Rows of a sum to c, Σb = 1, Σb_err = 0, dense output is 0 at θ=0 and b at θ=1.
        // Published coefficients of tsit5/dopri8 are decimals rounded near 1e-16..1e-15.
        let defect = tab.consistency_defect();
        assert!(defect < 1e-12, "{m}: consistency defect {defect:e}");
        assert_eq!(tab.stages(), tab.c.len());
        assert_eq!(m.is_adaptive(), tab.b_err.is_some(), "{m}");
    }
}

#[test]
fn fsal_is_derived_from_the_coefficients() {
    let fsal: Vec<Method> = Method::RUNGE_KUTTA
        .into_iter()
        .filter(|m| m.tableau().unwrap().is_fsal())
        .collect();
    assert_eq!(
        fsal,
        vec![
            Method::Bosh3,
            Method::Dopri5,
            Method::Tsit5,
            Method::Dopri8,
            // Stiffly accurate: the last stage is solved at (t1, y1).
            Method::ImplicitEuler,
            Method::Kvaerno3,
            Method::Kvaerno5,
        ]
    );
}

#[test]
fn method_names_round_trip() {
    for m in Method::ALL {
        assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
    }
    assert_eq!("RK4".parse::<Method>().unwrap(), Method::Rk4);
    assert_eq!("heun".parse::<Method>().unwrap(), Method::Heun2);
    assert_eq!(
        "adaptive-heun".parse::<Method>().unwrap(),
        Method::AdaptiveHeun
    );
    assert_eq!(
        "fixed_adams".parse::<Method>().unwrap(),
        Method::ImplicitAdams
    );
    for m in Method::ALL {
        assert_eq!(
            Method::RUNGE_KUTTA.contains(&m),
            m.tableau().is_some(),
            "{m}"
        );
        let adams = [Method::ExplicitAdams, Method::ImplicitAdams, Method::Adams];
        assert_eq!(m.is_multistep(), adams.contains(&m), "{m}");
    }
    assert_eq!("RKC".parse::<Method>().unwrap(), Method::Rkc);
    assert!(Method::Rkc.is_adaptive() && !Method::Rkc.is_implicit());
    assert_eq!(Method::Rkc.order(), 2);
    let err = "rk45".parse::<Method>().unwrap_err().to_string();
    assert!(err.contains("rk45") && err.contains("dopri5"), "{err}");
}

#[test]
fn defaults_are_documented_ones() {
    let o = SolveOptions::default();
    assert_eq!(o.method, Method::Dopri5);
    assert_eq!(o.rtol, 1e-7);
    assert!(matches!(o.atol, node_solvers::Atol::Scalar(a) if a == 1e-9));
}

/// The Rosenbrock methods' conditions up to their order (4 at most here; Hairer and Wanner,
/// *Solving ODEs II*, Table IV.7.1), and their embedded methods' up to theirs, in the
/// original form recovered from the transformed coefficients:
/// `Γ = (diag(1/γ) − C)⁻¹`, `α = AΓ`, `b = mΓ`, `β = α + Γ`, with `α_i = Σ_j α_ij` and
/// `β'_i = Σ_{j<i} β_ij`. (Non-autonomous problems add nothing once `α_i = c_i` and `d` are
/// the rows of `Γ`, which the consistency test checks.) rodas4p's error ratios approach 16
/// only slowly, which the convergence test cannot resolve before f64's round-off: these
/// conditions are what shows its order.
#[test]
fn rosenbrock_order_conditions() {
    let rosenbrock: Vec<Method> = Method::RUNGE_KUTTA
        .into_iter()
        .filter(|m| m.is_rosenbrock())
        .collect();
    assert_eq!(
        rosenbrock,
        [
            Method::Rodas4,
            Method::Rodas4P,
            Method::Rodas5P,
            Method::Ros34pw2
        ]
    );
    for m in rosenbrock {
        let tab = m.tableau().unwrap();
        let ros = tab.rosenbrock.unwrap();
        let (s, g) = (tab.stages(), ros.gamma);
        let lower = |rows: &[&[f64]]| {
            let mut x = vec![vec![0.0; s]; s];
            for (i, row) in rows.iter().enumerate() {
                x[i + 1][..row.len()].copy_from_slice(row);
            }
            x
        };
        let (a, c) = (lower(tab.a), lower(ros.coupling));
        // Γ by forward substitution of (I/γ − C) Γ = I, row by row.
        let mut gm: Vec<Vec<f64>> = Vec::with_capacity(s);
        for (i, ci) in c.iter().enumerate() {
            let row: Vec<f64> = (0..s)
                .map(|col| {
                    let unit = if i == col { 1.0 } else { 0.0 };
                    let coupled: f64 = gm.iter().zip(ci).map(|(gj, cij)| cij * gj[col]).sum();
                    g * (unit + coupled)
                })
                .collect();
            gm.push(row);
        }
        let times = |x: &[Vec<f64>], y: &[Vec<f64>]| -> Vec<Vec<f64>> {
            (0..s)
                .map(|i| {
                    (0..s)
                        .map(|j| (0..s).map(|k| x[i][k] * y[k][j]).sum())
                        .collect()
                })
                .collect()
        };
        let apply = |x: &[Vec<f64>], v: &[f64]| -> Vec<f64> {
            (0..s)
                .map(|i| (0..s).map(|k| x[i][k] * v[k]).sum())
                .collect()
        };
        let alpha = times(&a, &gm);
        let beta: Vec<Vec<f64>> = (0..s)
            .map(|i| {
                (0..s)
                    .map(|j| if j < i { alpha[i][j] + gm[i][j] } else { 0.0 })
                    .collect()
            })
            .collect();
        let ai: Vec<f64> = alpha.iter().map(|r| r.iter().sum()).collect();
        let bp: Vec<f64> = beta.iter().map(|r| r.iter().sum()).collect();
        let dot = |x: &[f64], y: &[f64]| -> f64 { x.iter().zip(y).map(|(p, q)| p * q).sum() };
        let pow = |v: &[f64], e: i32| -> Vec<f64> { v.iter().map(|x| x.powi(e)).collect() };
        let mul =
            |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * q).collect() };
        // The number of conditions for orders 1 to 4: 1, 2, 4, 8.
        let conditions = |b: &[f64]| {
            [
                (b.iter().sum::<f64>(), 1.0),
                (dot(b, &bp), 0.5 - g),
                (dot(b, &pow(&ai, 2)), 1.0 / 3.0),
                (dot(b, &apply(&beta, &bp)), 1.0 / 6.0 - g + g * g),
                (dot(b, &pow(&ai, 3)), 0.25),
                (dot(b, &mul(&ai, &apply(&alpha, &bp))), 0.125 - g / 3.0),
                (dot(b, &apply(&beta, &pow(&ai, 2))), 1.0 / 12.0 - g / 3.0),
                (
                    dot(b, &apply(&beta, &apply(&beta, &bp))),
                    1.0 / 24.0 - g / 2.0 + 1.5 * g * g - g.powi(3),
                ),
            ]
        };
        let count = |order: usize| [0, 1, 2, 4, 8][order.min(4)];
        // The weights in the original form, `b = mΓ`, of the method and of the embedded one.
        let original = |m: &[f64]| -> Vec<f64> {
            (0..s)
                .map(|j| (0..s).map(|i| m[i] * gm[i][j]).sum())
                .collect()
        };
        let err = tab.b_err.expect("an embedded method");
        let embedded: Vec<f64> = tab.b.iter().zip(err).map(|(b, e)| b - e).collect();
        for (what, b, order) in [
            ("order condition", original(tab.b), tab.order),
            (
                "embedded order condition",
                original(&embedded),
                tab.error_order,
            ),
        ] {
            let all = conditions(&b);
            for (k, (got, want)) in all.iter().enumerate().take(count(order)) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{m}: {what} {k}: {got} against {want}"
                );
            }
            // One order more fails (up to the fourth, the last checked here).
            if order < 4 {
                let next = &all[count(order)..count(order + 1)];
                assert!(
                    next.iter().any(|(got, want)| (got - want).abs() > 1e-6),
                    "{m}: the {what}s of order {} hold too",
                    order + 1
                );
            }
        }
    }
}
