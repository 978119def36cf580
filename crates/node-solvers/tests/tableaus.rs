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
        assert_eq!(m.is_multistep(), m.tableau().is_none(), "{m}");
        assert_eq!(Method::RUNGE_KUTTA.contains(&m), !m.is_multistep(), "{m}");
    }
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
