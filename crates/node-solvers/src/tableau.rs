//! Butcher tableaus of explicit and singly diagonally implicit Runge–Kutta methods.
//!
//! A method is its coefficients, nothing more: one generic stepper ([`crate::rk`]) runs any of
//! them. For stages `k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j + h γ k_i)` a step is
//! `y1 = y + h Σ b_i k_i`, with the embedded error estimate `e = h Σ b_err_i k_i`
//! (`b_err = b − b̂`, the difference to the lower-order weights). Explicit methods have
//! `γ = 0`; the implicit ones here are ESDIRK methods (an explicit first stage, then stages
//! that each solve one implicit equation with the same `γ`, by Newton's method).
//! Whether a method is FSAL ("first same as last") is derived from the coefficients.
//!
//! Rosenbrock methods ([`Rosenbrock`]) use the same table in their transformed form: the
//! stages are the increments of linear solves with `I − hγJ` instead of derivatives, and `a`,
//! `b`, `b_err` and the dense output weigh them the same way.

/// How a step's output is evaluated between its endpoints (dense output).
#[derive(Clone, Copy, Debug)]
pub enum Interpolant {
    /// Cubic Hermite through `y0`, `y1`, `f(t0, y0)`, `f(t1, y1)` (third order).
    Hermite,
    /// Quartic through `y0`, `y1`, `f0`, `f1` and a midpoint `y0 + h Σ mid_i k_i` (fourth order,
    /// Shampine 1986; torchdiffeq's dopri5 interpolant). Needs an FSAL method.
    QuarticMid(&'static [f64]),
    /// Weights `b_i(θ)` of a continuous extension `y(t0 + θh) = y0 + h Σ b_i(θ) k_i`.
    Weights(fn(f64, &mut [f64])),
    /// The Rodas methods' dense output (Hairer and Wanner's RODAS):
    /// `y(θ) = (1 − θ) y0 + θ (y1 + (1 − θ)(K_1 + θ K_2 + θ² K_3 + …))` with
    /// `K_r = h Σ_i H_ri k_i`, the rows `H_r` given here.
    Rodas(&'static [&'static [f64]]),
}

/// What an ESDIRK method adds to its tableau.
#[derive(Clone, Copy, Debug)]
pub struct Implicit {
    /// The diagonal coefficient `γ = a_ii` of every stage `i ≥ 1`: each such stage solves
    /// `Y_i = y + h Σ_{j<i} a_ij k_j + h γ f(t + c_i h, Y_i)`.
    pub gamma: f64,
    /// Row `i − 1` holds `α_i0 .. α_i(i−1)`: the first guess of stage `i`'s derivative is
    /// `Σ_j α_ij k_j` (rows sum to 1; diffrax's `a_predictor`, see its notes on DIRK
    /// predictors).
    pub predictor: &'static [&'static [f64]],
    /// For an IMEX (additive) method, the explicit method's rows: row `i − 1` holds
    /// `â_i0 .. â_i(i−1)`. With a [`crate::Split`] field `f = f_E + f_I`, stage `i` solves
    /// `Y_i = y + h Σ_{j<i} (â_ij k^E_j + a_ij k^I_j) + hγ f_I(t_i, Y_i)`, with
    /// `k^E_j = f_E(t_j, Y_j)` and `k^I_j = f_I(t_j, Y_j)`; both parts share `c`, `b` and `b_err`.
    /// With any other field the whole of it is treated implicitly (the ESDIRK method alone).
    /// `None` for an ESDIRK method.
    pub explicit: Option<&'static [&'static [f64]]>,
}

/// What a Rosenbrock (linearly implicit) method adds to its tableau, in Hairer and Wanner's
/// transformed form (*Solving ODEs II*, IV.7, (7.25)). With `J = ∂f/∂y` and `f_t = ∂f/∂t` at
/// the step start, stage `i` solves one linear system
/// `(I − hγJ) k_i = γ (f(t + c_i h, y + h Σ_{j<i} a_ij k_j) + Σ_{j<i} C_ij k_j + h d_i f_t)`
/// (`k_i` is Hairer's increment over `h`), and `y1 = y + h Σ b_i k_i` as for any tableau.
/// There is no Newton iteration, so nothing to fail to converge; but the order holds only
/// with the exact Jacobian, rebuilt at every step.
#[derive(Clone, Copy, Debug)]
pub struct Rosenbrock {
    /// The diagonal `γ` of the method's `Γ`.
    pub gamma: f64,
    /// Row `i − 1` holds `C_i0 .. C_i(i−1)` (`C = diag(1/γ) − Γ⁻¹`).
    pub coupling: &'static [&'static [f64]],
    /// `d_i`, the row sums of `Γ`: the weight of `h f_t` in stage `i`.
    pub time: &'static [f64],
    /// A W-method: the order holds with any matrix in place of `J` (only stability needs it
    /// close), so a Jacobian can be kept across steps ([`crate::SolveOptions::jacobian_reuse`]).
    pub w_method: bool,
}

impl Rosenbrock {
    /// The lower-triangular `Γ = (diag(1/γ) − C)⁻¹`, row-major `s × s`.
    fn gamma_matrix(&self, s: usize) -> Vec<f64> {
        // Forward substitution of `(I/γ − C) Γ = I`, one column at a time.
        let mut g = vec![0.0; s * s];
        for col in 0..s {
            for i in col..s {
                let row = if i == 0 {
                    &[][..]
                } else {
                    self.coupling[i - 1]
                };
                let coupled: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(j, c)| c * g[j * s + col])
                    .sum();
                let unit = if i == col { 1.0 } else { 0.0 };
                g[i * s + col] = self.gamma * (unit + coupled);
            }
        }
        g
    }
}

/// The coefficients of an explicit, singly diagonally implicit or Rosenbrock Runge–Kutta
/// method.
#[derive(Clone, Copy, Debug)]
pub struct ButcherTableau {
    /// Short name, as accepted by [`crate::Method`]'s `FromStr`.
    pub name: &'static str,
    /// Nodes `c_i`, one per stage; `c_0 = 0`.
    pub c: &'static [f64],
    /// Lower-triangular coefficients: row `i - 1` holds `a_i0 .. a_i(i-1)` of stage `i ≥ 1`.
    pub a: &'static [&'static [f64]],
    /// `None` for an explicit method; for an ESDIRK method its diagonal and stage predictors.
    pub implicit: Option<Implicit>,
    /// `Some` for a Rosenbrock method, whose `a`, `b`, `b_err` and dense output are in the
    /// transformed form (see [`Rosenbrock`]).
    pub rosenbrock: Option<Rosenbrock>,
    /// Weights of the propagated solution.
    pub b: &'static [f64],
    /// `b − b̂`: weights of the embedded error estimate, if the method has one.
    pub b_err: Option<&'static [f64]>,
    /// Order of the propagated solution.
    pub order: usize,
    /// Order of the embedded solution `b̂` (0 when there is none).
    pub error_order: usize,
    /// Dense output.
    pub interpolant: Interpolant,
}

impl ButcherTableau {
    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.c.len()
    }

    /// True when the last stage is evaluated at `(t + h, y1)`, so it is the next step's first
    /// stage: `c_last = 1` and the last row of `a` equals `b` (with `b_last = γ`, 0 for an
    /// explicit method: a stiffly accurate implicit method is FSAL too).
    pub fn is_fsal(&self) -> bool {
        let s = self.stages();
        // An IMEX method's last stage solves the implicit part at a state other than `y1`
        // (its explicit weights differ from `b`).
        s > 1
            && !self.is_imex()
            && self.rosenbrock.is_none()
            && self.c[s - 1] == 1.0
            && self.b[s - 1] == self.gamma()
            && self.a[s - 2].iter().zip(self.b).all(|(a, b)| a == b)
    }

    /// True for an implicit method, whose stages solve equations in the state (by Newton's
    /// method, or one linear solve each for a Rosenbrock method).
    pub fn is_implicit(&self) -> bool {
        self.implicit.is_some() || self.rosenbrock.is_some()
    }

    /// True for a Rosenbrock (linearly implicit) method.
    pub fn is_rosenbrock(&self) -> bool {
        self.rosenbrock.is_some()
    }

    /// True for a Rosenbrock W-method ([`Rosenbrock::w_method`]).
    pub fn is_w_method(&self) -> bool {
        self.rosenbrock.is_some_and(|r| r.w_method)
    }

    /// True for an IMEX (additive Runge–Kutta) method: an implicit method with an explicit
    /// companion for the non-stiff part of a [`crate::Split`] field.
    pub fn is_imex(&self) -> bool {
        self.implicit.is_some_and(|i| i.explicit.is_some())
    }

    /// The diagonal `γ` of an ESDIRK method; 0 for an explicit or Rosenbrock one (whose `a`
    /// has no diagonal).
    pub fn gamma(&self) -> f64 {
        self.implicit.map_or(0.0, |i| i.gamma)
    }

    /// True when the method has an embedded error estimate (can run adaptively).
    pub fn is_adaptive(&self) -> bool {
        self.b_err.is_some()
    }

    /// Exponent order `q + 1` of the local error estimate, used by step-size control.
    pub fn error_exponent(&self) -> f64 {
        (self.order.min(self.error_order) + 1) as f64
    }

    /// Largest deviation from the consistency conditions (rows of `a` and `γ` sum to `c`, `Σb = 1`,
    /// `Σb_err = 0`, dense output equal to `b` at `θ = 1` and to 0 at `θ = 0`). Zero up to
    /// rounding for a valid tableau; tests check every constant below with it.
    pub fn consistency_defect(&self) -> f64 {
        let s = self.stages();
        let mut worst: f64 = 0.0;
        if self.a.len() + 1 != s || self.b.len() != s {
            return f64::INFINITY;
        }
        if let Some(ros) = self.rosenbrock {
            return self.rosenbrock_defect(&ros);
        }
        worst = worst.max(self.c[0].abs());
        for (i, row) in self.a.iter().enumerate() {
            if row.len() != i + 1 {
                return f64::INFINITY;
            }
            let sum = row.iter().sum::<f64>() + self.gamma();
            worst = worst.max((sum - self.c[i + 1]).abs());
        }
        if let Some(imp) = self.implicit {
            if imp.predictor.len() + 1 != s {
                return f64::INFINITY;
            }
            for (i, row) in imp.predictor.iter().enumerate() {
                if row.len() != i + 1 {
                    return f64::INFINITY;
                }
                worst = worst.max((row.iter().sum::<f64>() - 1.0).abs());
            }
            if let Some(ex) = imp.explicit {
                if ex.len() + 1 != s {
                    return f64::INFINITY;
                }
                for (i, row) in ex.iter().enumerate() {
                    if row.len() != i + 1 {
                        return f64::INFINITY;
                    }
                    worst = worst.max((row.iter().sum::<f64>() - self.c[i + 1]).abs());
                }
            }
        }
        worst = worst.max((self.b.iter().sum::<f64>() - 1.0).abs());
        if let Some(e) = self.b_err {
            if e.len() != s {
                return f64::INFINITY;
            }
            worst = worst.max(e.iter().sum::<f64>().abs());
        }
        worst.max(self.dense_defect())
    }

    /// How far the dense output is from `b` at `θ = 1` and from 0 at `θ = 0`.
    fn dense_defect(&self) -> f64 {
        let s = self.stages();
        let mut w = vec![0.0; s + 1];
        self.dense_weights(1.0, &mut w);
        let mut worst = w[s].abs();
        for (wi, bi) in w.iter().zip(self.b) {
            worst = worst.max((wi - bi).abs());
        }
        self.dense_weights(0.0, &mut w);
        worst.max(w.iter().fold(0.0f64, |m, x| m.max(x.abs())))
    }

    /// [`ButcherTableau::consistency_defect`] of a Rosenbrock method: back in the original
    /// form (`α = AΓ`, `b = mΓ`), the rows of `α` sum to `c`, `Σb = 1`, the error weights sum
    /// to 0, the rows of `Γ` sum to `d`, and the dense output is `b` at `θ = 1`, 0 at 0.
    fn rosenbrock_defect(&self, ros: &Rosenbrock) -> f64 {
        let s = self.stages();
        if ros.coupling.len() + 1 != s
            || ros.time.len() != s
            || ros
                .coupling
                .iter()
                .enumerate()
                .any(|(i, r)| r.len() != i + 1)
            || self.b_err.is_some_and(|e| e.len() != s)
        {
            return f64::INFINITY;
        }
        let g = ros.gamma_matrix(s);
        // `v Γ` summed: Σ_i Σ_j v_i Γ_ij.
        let weighed_sum = |v: &[f64]| -> f64 {
            (0..s)
                .map(|j| (0..s).map(|i| v[i] * g[i * s + j]).sum::<f64>())
                .sum()
        };
        let mut worst = self.c[0].abs();
        for (i, row) in self.a.iter().enumerate() {
            let mut padded = row.to_vec();
            padded.resize(s, 0.0);
            worst = worst.max((weighed_sum(&padded) - self.c[i + 1]).abs());
        }
        worst = worst.max((weighed_sum(self.b) - 1.0).abs());
        if let Some(e) = self.b_err {
            worst = worst.max(weighed_sum(e).abs());
        }
        for (i, d) in ros.time.iter().enumerate() {
            worst = worst.max((g[i * s..(i + 1) * s].iter().sum::<f64>() - d).abs());
        }
        worst.max(self.dense_defect())
    }

    /// Weights `w` (length `stages + 1`) with `y(t0 + θh) = y0 + h (Σ_i w_i k_i + w_s f1)`,
    /// where `f1 = f(t1, y1)`. For FSAL methods `f1` is the last stage and `w_s` is folded
    /// into it (returned as 0).
    pub fn dense_weights(&self, theta: f64, w: &mut [f64]) {
        let s = self.stages();
        w.iter_mut().for_each(|x| *x = 0.0);
        match self.interpolant {
            Interpolant::Hermite => {
                // h01 y1 + h10 h f0 + h11 h f1 with y1 = y0 + h Σ b_i k_i (h00 + h01 = 1).
                let t2 = theta * theta;
                let t3 = t2 * theta;
                let h01 = -2.0 * t3 + 3.0 * t2;
                let h10 = t3 - 2.0 * t2 + theta;
                let h11 = t3 - t2;
                for (wi, bi) in w.iter_mut().zip(self.b) {
                    *wi = h01 * bi;
                }
                w[0] += h10;
                if self.is_fsal() {
                    w[s - 1] += h11;
                } else {
                    w[s] = h11;
                }
            }
            Interpolant::QuarticMid(mid) => {
                // p(θ) = y0 + θ d + θ² c + θ³ b + θ⁴ a fitted to y0, y1, y_mid, f0, f1
                // (torchdiffeq `_interp_fit`), expanded into stage weights.
                let (t2, t3, t4) = (theta * theta, theta.powi(3), theta.powi(4));
                let wy1 = -5.0 * t2 + 14.0 * t3 - 8.0 * t4;
                let wmid = 16.0 * t2 - 32.0 * t3 + 16.0 * t4;
                let wf0 = theta - 4.0 * t2 + 5.0 * t3 - 2.0 * t4;
                let wf1 = t2 - 3.0 * t3 + 2.0 * t4;
                for ((wi, bi), mi) in w.iter_mut().zip(self.b).zip(mid) {
                    *wi = wy1 * bi + wmid * mi;
                }
                w[0] += wf0;
                w[s - 1] += wf1;
            }
            Interpolant::Weights(f) => f(theta, &mut w[..s]),
            Interpolant::Rodas(h) => rodas_dense(theta, self.b, h, &mut w[..s]),
        }
    }
}

/// Forward Euler (order 1).
pub const EULER: ButcherTableau = ButcherTableau {
    name: "euler",
    c: &[0.0],
    a: &[],
    b: &[1.0],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 1,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Explicit midpoint method (order 2).
pub const MIDPOINT: ButcherTableau = ButcherTableau {
    name: "midpoint",
    c: &[0.0, 0.5],
    a: &[&[0.5]],
    b: &[0.0, 1.0],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 2,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Heun's method, the explicit trapezoidal rule (order 2).
pub const HEUN2: ButcherTableau = ButcherTableau {
    name: "heun2",
    c: &[0.0, 1.0],
    a: &[&[1.0]],
    b: &[0.5, 0.5],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 2,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Ralston's second-order method (minimum error bound among 2-stage order-2 methods;
/// A. Ralston, Math. Comp. 16, 1962).
pub const RALSTON: ButcherTableau = ButcherTableau {
    name: "ralston",
    c: &[0.0, 2.0 / 3.0],
    a: &[&[2.0 / 3.0]],
    b: &[0.25, 0.75],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 2,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Heun's third-order method.
pub const HEUN3: ButcherTableau = ButcherTableau {
    name: "heun3",
    c: &[0.0, 1.0 / 3.0, 2.0 / 3.0],
    a: &[&[1.0 / 3.0], &[0.0, 2.0 / 3.0]],
    b: &[0.25, 0.0, 0.75],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 3,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// The classic fourth-order Runge–Kutta method (Kutta 1901).
pub const RK4: ButcherTableau = ButcherTableau {
    name: "rk4",
    c: &[0.0, 0.5, 0.5, 1.0],
    a: &[&[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 4,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Kutta's 3/8-rule fourth-order method (Kutta 1901). This is what torchdiffeq calls `rk4`.
pub const RK38: ButcherTableau = ButcherTableau {
    name: "rk38",
    c: &[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
    a: &[&[1.0 / 3.0], &[-1.0 / 3.0, 1.0], &[1.0, -1.0, 1.0]],
    b: &[0.125, 0.375, 0.375, 0.125],
    implicit: None,
    rosenbrock: None,
    b_err: None,
    order: 4,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Heun–Euler 2(1): Heun's method with Euler as the embedded first-order estimate
/// (torchdiffeq's `adaptive_heun`).
pub const ADAPTIVE_HEUN: ButcherTableau = ButcherTableau {
    name: "adaptive_heun",
    c: &[0.0, 1.0],
    a: &[&[1.0]],
    b: &[0.5, 0.5],
    implicit: None,
    rosenbrock: None,
    b_err: Some(&[-0.5, 0.5]),
    order: 2,
    error_order: 1,
    interpolant: Interpolant::Hermite,
};

/// Fehlberg's 2(1) pair, propagating the second-order solution (E. Fehlberg, NASA TR R-315,
/// 1969; torchdiffeq's `fehlberg2`).
pub const FEHLBERG2: ButcherTableau = ButcherTableau {
    name: "fehlberg2",
    c: &[0.0, 0.5, 1.0],
    a: &[&[0.5], &[1.0 / 256.0, 255.0 / 256.0]],
    b: &[1.0 / 512.0, 255.0 / 256.0, 1.0 / 512.0],
    implicit: None,
    rosenbrock: None,
    b_err: Some(&[-1.0 / 512.0, 0.0, 1.0 / 512.0]),
    order: 2,
    error_order: 1,
    interpolant: Interpolant::Hermite,
};

/// Bogacki–Shampine 3(2) pair, FSAL (P. Bogacki, L. F. Shampine, Appl. Math. Lett. 2(4), 1989).
pub const BOSH3: ButcherTableau = ButcherTableau {
    name: "bosh3",
    c: &[0.0, 0.5, 0.75, 1.0],
    a: &[&[0.5], &[0.0, 0.75], &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0]],
    b: &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0, 0.0],
    implicit: None,
    rosenbrock: None,
    b_err: Some(&[
        2.0 / 9.0 - 7.0 / 24.0,
        1.0 / 3.0 - 0.25,
        4.0 / 9.0 - 1.0 / 3.0,
        -0.125,
    ]),
    order: 3,
    error_order: 2,
    interpolant: Interpolant::Hermite,
};

/// Dormand–Prince 5(4) pair, FSAL (J. R. Dormand, P. J. Prince, J. Comput. Appl. Math. 6(1),
/// 1980), with Shampine's embedded weights and fourth-order dense output (L. F. Shampine,
/// Math. Comp. 46, 1986), as in torchdiffeq's `dopri5`.
pub const DOPRI5: ButcherTableau = ButcherTableau {
    name: "dopri5",
    c: &[0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0],
    a: &[
        &[0.2],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ],
    b: &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ],
    implicit: None,
    rosenbrock: None,
    b_err: Some(&[
        35.0 / 384.0 - 1951.0 / 21600.0,
        0.0,
        500.0 / 1113.0 - 22642.0 / 50085.0,
        125.0 / 192.0 - 451.0 / 720.0,
        -2187.0 / 6784.0 + 12231.0 / 42400.0,
        11.0 / 84.0 - 649.0 / 6300.0,
        -1.0 / 60.0,
    ]),
    order: 5,
    error_order: 4,
    interpolant: Interpolant::QuarticMid(&[
        6025192743.0 / 30085553152.0 / 2.0,
        0.0,
        51252292925.0 / 65400821598.0 / 2.0,
        -2691868925.0 / 45128329728.0 / 2.0,
        187940372067.0 / 1594534317056.0 / 2.0,
        -1776094331.0 / 19743644256.0 / 2.0,
        11237099.0 / 235043384.0 / 2.0,
    ]),
};

/// Tsitouras 5(4) pair, FSAL, with its free fourth-order interpolant (Ch. Tsitouras,
/// Comput. Math. Appl. 62(2), 2011; coefficients as in diffrax's `Tsit5`).
pub const TSIT5: ButcherTableau = ButcherTableau {
    name: "tsit5",
    c: &[0.0, 0.161, 0.327, 0.9, 0.980_025_540_904_509_7, 1.0, 1.0],
    a: &[
        &[0.161],
        &[-0.008_480_655_492_356_989, 0.335_480_655_492_357],
        &[
            2.897_153_057_105_493,
            -6.359_448_489_975_075,
            4.362_295_432_869_581,
        ],
        &[
            5.325_864_828_439_257,
            -11.748_883_564_062_828,
            7.495_539_342_889_836,
            -0.092_495_066_361_755_25,
        ],
        &[
            5.861_455_442_946_42,
            -12.920_969_317_847_11,
            8.159_367_898_576_159,
            -0.071_584_973_281_401,
            -0.028_269_050_394_068_383,
        ],
        &[
            0.096_460_766_818_065_23,
            0.01,
            0.479_889_650_414_499_6,
            1.379_008_574_103_742,
            -3.290_069_515_436_081,
            2.324_710_524_099_774,
        ],
    ],
    b: &[
        0.096_460_766_818_065_23,
        0.01,
        0.479_889_650_414_499_6,
        1.379_008_574_103_742,
        -3.290_069_515_436_081,
        2.324_710_524_099_774,
        0.0,
    ],
    implicit: None,
    rosenbrock: None,
    b_err: Some(&[
        0.096_460_766_818_065_23 - 0.094_680_755_765_839_46,
        0.01 - 0.009_183_565_540_343_253,
        0.479_889_650_414_499_6 - 0.487_770_528_424_761_6,
        1.379_008_574_103_742 - 1.234_297_566_930_479,
        -3.290_069_515_436_081 + 2.707_712_349_983_525_5,
        2.324_710_524_099_774 - 1.866_628_418_170_587,
        -1.0 / 66.0,
    ]),
    order: 5,
    error_order: 4,
    interpolant: Interpolant::Weights(tsit5_weights),
};

fn tsit5_weights(t: f64, w: &mut [f64]) {
    let t2 = t * t;
    w[0] = -1.053_088_497_729_021_6
        * t
        * (t - 1.329_989_018_975_141)
        * (t2 - 1.436_402_854_171_635_1 * t + 0.713_981_691_707_420_9);
    w[1] = 0.1017 * t2 * (t2 - 2.196_656_833_824_975_4 * t + 1.294_985_250_737_463);
    w[2] =
        2.490_627_285_651_253 * t2 * (t2 - 2.385_356_454_720_616_5 * t + 1.578_034_682_080_924_8);
    w[3] = -16.548_102_889_244_902
        * (t - 1.217_129_272_955_332_4)
        * (t - 0.616_204_060_378_000_9)
        * t2;
    w[4] =
        47.379_521_962_819_28 * (t - 1.203_071_208_372_362_7) * (t - 0.658_047_292_653_547_4) * t2;
    w[5] = -34.870_657_861_496_61 * (t - 1.2) * (t - 2.0 / 3.0) * t2;
    w[6] = 2.5 * (t - 1.0) * (t - 0.6) * t2;
}

/// Prince–Dormand 8(7) pair "RK8(7)13M", FSAL (P. J. Prince, J. R. Dormand, J. Comput. Appl.
/// Math. 7(1), 1981), with Bogacki–Shampine's dense output (Comput. Math. Appl. 20(3), 1990).
/// This is the method torchdiffeq and diffrax call `dopri8`.
pub const DOPRI8: ButcherTableau = ButcherTableau {
    name: "dopri8",
    c: &[
        0.0,
        1.0 / 18.0,
        1.0 / 12.0,
        1.0 / 8.0,
        5.0 / 16.0,
        3.0 / 8.0,
        59.0 / 400.0,
        93.0 / 200.0,
        5490023248.0 / 9719169821.0,
        13.0 / 20.0,
        1201146811.0 / 1299019798.0,
        1.0,
        1.0,
        1.0,
    ],
    a: &[
        &[1.0 / 18.0],
        &[1.0 / 48.0, 1.0 / 16.0],
        &[1.0 / 32.0, 0.0, 3.0 / 32.0],
        &[5.0 / 16.0, 0.0, -75.0 / 64.0, 75.0 / 64.0],
        &[3.0 / 80.0, 0.0, 0.0, 3.0 / 16.0, 3.0 / 20.0],
        &[
            29443841.0 / 614563906.0,
            0.0,
            0.0,
            77736538.0 / 692538347.0,
            -28693883.0 / 1125000000.0,
            23124283.0 / 1800000000.0,
        ],
        &[
            16016141.0 / 946692911.0,
            0.0,
            0.0,
            61564180.0 / 158732637.0,
            22789713.0 / 633445777.0,
            545815736.0 / 2771057229.0,
            -180193667.0 / 1043307555.0,
        ],
        &[
            39632708.0 / 573591083.0,
            0.0,
            0.0,
            -433636366.0 / 683701615.0,
            -421739975.0 / 2616292301.0,
            100302831.0 / 723423059.0,
            790204164.0 / 839813087.0,
            800635310.0 / 3783071287.0,
        ],
        &[
            246121993.0 / 1340847787.0,
            0.0,
            0.0,
            -37695042795.0 / 15268766246.0,
            -309121744.0 / 1061227803.0,
            -12992083.0 / 490766935.0,
            6005943493.0 / 2108947869.0,
            393006217.0 / 1396673457.0,
            123872331.0 / 1001029789.0,
        ],
        &[
            -1028468189.0 / 846180014.0,
            0.0,
            0.0,
            8478235783.0 / 508512852.0,
            1311729495.0 / 1432422823.0,
            -10304129995.0 / 1701304382.0,
            -48777925059.0 / 3047939560.0,
            15336726248.0 / 1032824649.0,
            -45442868181.0 / 3398467696.0,
            3065993473.0 / 597172653.0,
        ],
        &[
            185892177.0 / 718116043.0,
            0.0,
            0.0,
            -3185094517.0 / 667107341.0,
            -477755414.0 / 1098053517.0,
            -703635378.0 / 230739211.0,
            5731566787.0 / 1027545527.0,
            5232866602.0 / 850066563.0,
            -4093664535.0 / 808688257.0,
            3962137247.0 / 1805957418.0,
            65686358.0 / 487910083.0,
        ],
        &[
            403863854.0 / 491063109.0,
            0.0,
            0.0,
            -5068492393.0 / 434740067.0,
            -411421997.0 / 543043805.0,
            652783627.0 / 914296604.0,
            11173962825.0 / 925320556.0,
            -13158990841.0 / 6184727034.0,
            3936647629.0 / 1978049680.0,
            -160528059.0 / 685178525.0,
            248638103.0 / 1413531060.0,
            0.0,
        ],
        &DOPRI8_B_HEAD,
    ],
    b: &[
        DOPRI8_B_HEAD[0],
        0.0,
        0.0,
        0.0,
        0.0,
        DOPRI8_B_HEAD[5],
        DOPRI8_B_HEAD[6],
        DOPRI8_B_HEAD[7],
        DOPRI8_B_HEAD[8],
        DOPRI8_B_HEAD[9],
        DOPRI8_B_HEAD[10],
        DOPRI8_B_HEAD[11],
        DOPRI8_B_HEAD[12],
        0.0,
    ],
    implicit: None,
    rosenbrock: None,
    b_err: Some(&[
        DOPRI8_B_HEAD[0] - 13451932.0 / 455176623.0,
        0.0,
        0.0,
        0.0,
        0.0,
        DOPRI8_B_HEAD[5] + 808719846.0 / 976000145.0,
        DOPRI8_B_HEAD[6] - 1757004468.0 / 5645159321.0,
        DOPRI8_B_HEAD[7] - 656045339.0 / 265891186.0,
        DOPRI8_B_HEAD[8] + 3867574721.0 / 1518517206.0,
        DOPRI8_B_HEAD[9] - 465885868.0 / 322736535.0,
        DOPRI8_B_HEAD[10] - 53011238.0 / 667516719.0,
        DOPRI8_B_HEAD[11] - 2.0 / 45.0,
        DOPRI8_B_HEAD[12],
        0.0,
    ]),
    order: 8,
    error_order: 7,
    interpolant: Interpolant::Weights(dopri8_weights),
};

const DOPRI8_B_HEAD: [f64; 13] = [
    14005451.0 / 335480064.0,
    0.0,
    0.0,
    0.0,
    0.0,
    -59238493.0 / 1068277825.0,
    181606767.0 / 758867731.0,
    561292985.0 / 797845732.0,
    -1041891430.0 / 1371343529.0,
    760417239.0 / 1151165299.0,
    118820643.0 / 751138087.0,
    -528747749.0 / 2220607170.0,
    0.25,
];

/// Bogacki–Shampine continuous extension: `b_i(θ) = θ · Σ_j p_ij θ^(5-j)`, highest power first.
const DOPRI8_DENSE: [(usize, [f64; 6]); 10] = [
    (
        0,
        [
            -6.344_834_939_286_04,
            22.139_650_499_809_407,
            -30.061_056_828_966_645,
            19.999_006_933_368_397,
            -6.691_018_173_783_76,
            1.0,
        ],
    ),
    (
        5,
        [
            -39.610_791_985_220_25,
            116.442_214_955_034_22,
            -121.499_962_773_133_46,
            52.227_353_279_294_55,
            -7.614_265_804_587_268,
            0.0,
        ],
    ),
    (
        6,
        [
            20.376_121_380_879_144,
            -67.145_131_882_595_72,
            83.172_100_463_984_77,
            -46.891_916_418_109_36,
            10.728_139_263_042_887,
            0.0,
        ],
    ),
    (
        7,
        [
            7.334_709_882_679_536,
            -16.567_224_352_749_65,
            9.572_450_755_599_366,
            -0.189_089_322_501_059_55,
            0.552_663_706_375_364_9,
            0.0,
        ],
    ),
    (
        8,
        [
            32.880_177_435_245_92,
            -89.991_601_484_724_5,
            87.840_605_767_720_56,
            -35.707_597_594_622_21,
            4.218_656_262_566_515,
            0.0,
        ],
    ),
    (
        9,
        [
            -10.158_899_052_642_676,
            22.623_748_964_853_285,
            -17.415_210_777_076_297,
            6.273_644_808_324_035,
            -0.662_720_912_536_159_8,
            0.0,
        ],
    ),
    (
        10,
        [
            -12.540_126_809_878_256,
            32.236_234_016_735_54,
            -28.590_328_951_479_098,
            10.316_088_127_245_075,
            -1.263_678_900_113_546_2,
            0.0,
        ],
    ),
    (
        11,
        [
            29.555_300_148_451_604,
            -82.102_031_548_835_98,
            81.663_095_058_434_14,
            -34.765_076_986_661_18,
            5.410_603_789_859_042,
            0.0,
        ],
    ),
    (
        12,
        [
            -41.792_348_642_439_06,
            116.266_218_579_111_95,
            -114.937_529_137_700_94,
            47.745_797_107_822_554,
            -7.032_137_906_794_574,
            0.0,
        ],
    ),
    (
        13,
        [
            20.300_692_582_210_083,
            -53.902_077_746_638_54,
            50.255_836_422_617_6,
            -19.008_209_934_160_803,
            2.353_758_675_971_498_3,
            0.0,
        ],
    ),
];

fn dopri8_weights(t: f64, w: &mut [f64]) {
    for (i, p) in DOPRI8_DENSE.iter() {
        w[*i] = t * p.iter().fold(0.0, |acc, c| acc * t + c);
    }
}

/// Backward (implicit) Euler, order 1, L-stable, as an ESDIRK of two stages: the explicit
/// first stage is `f(t, y)` (reused from the previous step), the second solves
/// `y1 = y + h f(t + h, y1)`. Its error estimate is the difference to forward Euler, as
/// diffrax's `ImplicitEuler`.
pub const IMPLICIT_EULER: ButcherTableau = ButcherTableau {
    name: "implicit_euler",
    c: &[0.0, 1.0],
    a: &[&[0.0]],
    implicit: Some(Implicit {
        gamma: 1.0,
        predictor: &[&[1.0]],
        explicit: None,
    }),
    b: &[0.0, 1.0],
    rosenbrock: None,
    b_err: Some(&[-1.0, 1.0]),
    order: 1,
    error_order: 1,
    interpolant: Interpolant::Hermite,
};

/// `γ` of Kværnø's 3(2) method: the root in (0, 1/2) of `6γ³ − 18γ² + 9γ − 1`.
const KV3_G: f64 = 0.435866521508459;

/// Kværnø's 3(2) ESDIRK method: four stages, stiffly accurate (so FSAL), L-stable, with an
/// embedded second-order estimate (A. Kværnø, "Singly diagonally implicit Runge–Kutta
/// methods with an explicit first stage", BIT 44, 2004; diffrax's `Kvaerno3`). The
/// coefficients are Kværnø's closed forms in `γ`, evaluated to double precision:
/// `a31 = (−4γ² + 6γ − 1)/(4γ)`, `a32 = (1 − 2γ)/(4γ)`, `a41 = (6γ − 1)/(12γ)`,
/// `a42 = −1/((24γ − 12)γ)`, `a43 = (−6γ² + 6γ − 1)/(6γ − 3)`.
pub const KVAERNO3: ButcherTableau = ButcherTableau {
    name: "kvaerno3",
    c: &[0.0, 2.0 * KV3_G, 1.0, 1.0],
    a: &[
        &[KV3_G],
        &[0.49056338842178057, 0.07357009006976043],
        &[0.30880996997674652, 1.4905633884217806, -1.2352398799069861],
    ],
    implicit: Some(Implicit {
        gamma: KV3_G,
        // Linear extrapolation of the derivatives to the third stage (θ = 1/(2γ)), then the
        // second-last row of `a`: diffrax's.
        predictor: &[
            &[1.0],
            &[1.0 - 0.5 / KV3_G, 0.5 / KV3_G],
            &[0.49056338842178057, 0.07357009006976043, KV3_G],
        ],
        explicit: None,
    }),
    b: &[
        0.30880996997674652,
        1.4905633884217806,
        -1.2352398799069861,
        KV3_G,
    ],
    rosenbrock: None,
    b_err: Some(&[
        0.30880996997674652 - 0.49056338842178057,
        1.4905633884217806 - 0.07357009006976043,
        -1.2352398799069861 - KV3_G,
        KV3_G,
    ]),
    order: 3,
    error_order: 2,
    interpolant: Interpolant::Hermite,
};

/// Kværnø's 5(4) ESDIRK method: seven stages, stiffly accurate (so FSAL), L-stable, with an
/// embedded fourth-order estimate (Kværnø 2004, as [`KVAERNO3`]; the coefficients are
/// diffrax's `Kvaerno5`). One stage is evaluated past the end of the step (`c = 1.23`), so a
/// step that ends at a jump of the field ([`crate::SolveOptions::jump_ts`]) evaluates it on
/// the far side: prefer [`KVAERNO3`] there.
#[allow(clippy::excessive_precision)] // the published decimals, as printed
pub const KVAERNO5: ButcherTableau = ButcherTableau {
    name: "kvaerno5",
    c: &[
        0.0,
        0.52,
        1.230333209967908,
        0.8957659843500759,
        0.43639360985864756,
        1.0,
        1.0,
    ],
    a: &[
        &[0.26],
        &[0.13, 0.84033320996790809],
        &[
            0.22371961478320505,
            0.47675532319799699,
            -0.06470895363112615,
        ],
        &[
            0.16648564323248321,
            0.10450018841591720,
            0.03631482272098715,
            -0.13090704451073998,
        ],
        &[
            0.13855640231268224,
            0.0,
            -0.04245337201752043,
            0.02446657898003141,
            0.61943039072480676,
        ],
        &[
            0.13659751177640291,
            0.0,
            -0.05496908796538376,
            -0.04118626728321046,
            0.62993304899016403,
            0.06962479448202728,
        ],
    ],
    implicit: Some(Implicit {
        gamma: 0.26,
        // diffrax's (from OrdinaryDiffEq.jl, with α21 = 1).
        predictor: &[
            &[1.0],
            &[-1.366025403784441, 2.3660254037844357],
            &[
                -0.19650552613122207,
                0.8113579546496623,
                0.38514757148155954,
            ],
            &[
                0.10375304369958693,
                0.937994698066431,
                -0.04174774176601781,
                0.0,
            ],
            &[
                -0.17281112873898072,
                0.6235784481025847,
                0.5492326806363959,
                0.0,
                0.0,
            ],
            &[
                0.13855640231268224,
                0.0,
                -0.04245337201752043,
                0.02446657898003141,
                0.61943039072480676,
                0.26,
            ],
        ],
        explicit: None,
    }),
    b: &[
        0.13659751177640291,
        0.0,
        -0.05496908796538376,
        -0.04118626728321046,
        0.62993304899016403,
        0.06962479448202728,
        0.26,
    ],
    rosenbrock: None,
    b_err: Some(&[
        0.13659751177640291 - 0.13855640231268224,
        0.0,
        -0.05496908796538376 + 0.04245337201752043,
        -0.04118626728321046 - 0.02446657898003141,
        0.62993304899016403 - 0.61943039072480676,
        0.06962479448202728 - 0.26,
        0.26,
    ]),
    order: 5,
    error_order: 4,
    interpolant: Interpolant::Hermite,
};

/// `γ` of Kennedy and Carpenter's `ARK3(2)4L[2]SA`.
const KC3_G: f64 = 1767732205903.0 / 4055673282236.0;
const KC3_B: [f64; 4] = [
    1471266399579.0 / 7840856788654.0,
    -4482444167858.0 / 7529755066697.0,
    11266239266428.0 / 11593286722821.0,
    KC3_G,
];
const KC3_BHAT: [f64; 4] = [
    2756255671327.0 / 12835298489170.0,
    -10771552573575.0 / 22201958757719.0,
    9247589265047.0 / 10645013368117.0,
    2193209047091.0 / 5459859503100.0,
];
const KC3_C: [f64; 4] = [0.0, 2.0 * KC3_G, 0.6, 1.0];

/// Second-order dense output of [`KENCARP3`], Kennedy and Carpenter's `b*_i(θ)`.
fn kencarp3_dense(t: f64, w: &mut [f64]) {
    const P: [[f64; 2]; 4] = [
        [
            -215264564351.0 / 13552729205753.0,
            4655552711362.0 / 22874653954995.0,
        ],
        [
            17870216137069.0 / 13817060693119.0,
            -18682724506714.0 / 9892148508045.0,
        ],
        [
            -28141676662227.0 / 17317692491321.0,
            34259539580243.0 / 13192909600954.0,
        ],
        [
            2508943948391.0 / 7218656332882.0,
            584795268549.0 / 6622622206610.0,
        ],
    ];
    for (wi, p) in w.iter_mut().zip(&P) {
        *wi = t * (p[0] * t + p[1]);
    }
}

/// Kennedy and Carpenter's `ARK3(2)4L[2]SA` (diffrax's `KenCarp3`): an IMEX method of order 3
/// with an embedded second-order estimate, four stages. Its implicit part is an L-stable,
/// stiffly accurate ESDIRK method, its explicit part an explicit RK method of the same
/// order, coupled to order 3 (C. A. Kennedy and M. H. Carpenter, "Additive Runge–Kutta
/// schemes for convection–diffusion–reaction equations", Appl. Numer. Math. 44, 2003).
/// Made for a [`crate::Split`] field: the stiff part is solved by Newton's method, the
/// other part only evaluated.
pub const KENCARP3: ButcherTableau = ButcherTableau {
    name: "kencarp3",
    c: &KC3_C,
    a: &[
        &[KC3_G],
        &[
            2746238789719.0 / 10658868560708.0,
            -640167445237.0 / 6845629431997.0,
        ],
        &[KC3_B[0], KC3_B[1], KC3_B[2]],
    ],
    implicit: Some(Implicit {
        gamma: KC3_G,
        // diffrax's: linear extrapolation of the derivatives from stages 0 and 1.
        predictor: &[
            &[1.0],
            &[1.0 - KC3_C[2] / KC3_C[1], KC3_C[2] / KC3_C[1]],
            &[1.0 - KC3_C[3] / KC3_C[1], KC3_C[3] / KC3_C[1], 0.0],
        ],
        explicit: Some(&[
            &[2.0 * KC3_G],
            &[
                5535828885825.0 / 10492691773637.0,
                788022342437.0 / 10882634858940.0,
            ],
            &[
                6485989280629.0 / 16251701735622.0,
                -4246266847089.0 / 9704473918619.0,
                10755448449292.0 / 10357097424841.0,
            ],
        ]),
    }),
    b: &KC3_B,
    rosenbrock: None,
    b_err: Some(&[
        KC3_B[0] - KC3_BHAT[0],
        KC3_B[1] - KC3_BHAT[1],
        KC3_B[2] - KC3_BHAT[2],
        KC3_B[3] - KC3_BHAT[3],
    ]),
    order: 3,
    error_order: 2,
    interpolant: Interpolant::Weights(kencarp3_dense),
};

const KC4_B: [f64; 6] = [
    82889.0 / 524892.0,
    0.0,
    15625.0 / 83664.0,
    69875.0 / 102672.0,
    -2260.0 / 8211.0,
    0.25,
];
const KC4_BHAT: [f64; 6] = [
    4586570599.0 / 29645900160.0,
    0.0,
    178811875.0 / 945068544.0,
    814220225.0 / 1159782912.0,
    -3700637.0 / 11593932.0,
    61727.0 / 225920.0,
];
const KC4_C: [f64; 6] = [0.0, 0.5, 83.0 / 250.0, 31.0 / 50.0, 17.0 / 20.0, 1.0];

/// Third-order dense output of [`KENCARP4`], Kennedy and Carpenter's `b*_i(θ)`.
fn kencarp4_dense(t: f64, w: &mut [f64]) {
    const P: [[f64; 3]; 6] = [
        [
            6818779379841.0 / 7100303317025.0,
            -54480133.0 / 30881146.0,
            6943876665148.0 / 7220017795957.0,
        ],
        [0.0, 0.0, 0.0],
        [
            2173542590792.0 / 12501825683035.0,
            -11436875.0 / 14766696.0,
            7640104374378.0 / 9702883013639.0,
        ],
        [
            -31592104683404.0 / 5083833661969.0,
            174696575.0 / 18121608.0,
            -20649996744609.0 / 7521556579894.0,
        ],
        [
            61146701046299.0 / 7138195549469.0,
            -12120380.0 / 966161.0,
            8854892464581.0 / 2390941311638.0,
        ],
        [
            -17219254887155.0 / 4939391667607.0,
            3843.0 / 706.0,
            -11397109935349.0 / 6675773540249.0,
        ],
    ];
    for (wi, p) in w.iter_mut().zip(&P) {
        *wi = t * ((p[0] * t + p[1]) * t + p[2]);
    }
}

/// Kennedy and Carpenter's `ARK4(3)6L[2]SA` (diffrax's `KenCarp4`): an IMEX method of order 4
/// with an embedded third-order estimate, six stages, third-order dense output; its implicit
/// part L-stable and stiffly accurate (Kennedy and Carpenter 2003, as [`KENCARP3`]).
pub const KENCARP4: ButcherTableau = ButcherTableau {
    name: "kencarp4",
    c: &KC4_C,
    a: &[
        &[0.25],
        &[8611.0 / 62500.0, -1743.0 / 31250.0],
        &[
            5012029.0 / 34652500.0,
            -654441.0 / 2922500.0,
            174375.0 / 388108.0,
        ],
        &[
            15267082809.0 / 155376265600.0,
            -71443401.0 / 120774400.0,
            730878875.0 / 902184768.0,
            2285395.0 / 8070912.0,
        ],
        &[KC4_B[0], KC4_B[1], KC4_B[2], KC4_B[3], KC4_B[4]],
    ],
    implicit: Some(Implicit {
        gamma: 0.25,
        // diffrax's: linear extrapolation from an earlier stage (the nearest one behind).
        predictor: &[
            &[1.0],
            &[1.0 - KC4_C[2] / KC4_C[1], KC4_C[2] / KC4_C[1]],
            &[1.0 - KC4_C[3] / KC4_C[1], KC4_C[3] / KC4_C[1], 0.0],
            &[1.0 - KC4_C[4] / KC4_C[3], 0.0, 0.0, KC4_C[4] / KC4_C[3]],
            &[
                1.0 - KC4_C[5] / KC4_C[4],
                0.0,
                0.0,
                0.0,
                KC4_C[5] / KC4_C[4],
            ],
        ],
        explicit: Some(&[
            &[0.5],
            &[13861.0 / 62500.0, 6889.0 / 62500.0],
            &[
                -116923316275.0 / 2393684061468.0,
                -2731218467317.0 / 15368042101831.0,
                9408046702089.0 / 11113171139209.0,
            ],
            &[
                -451086348788.0 / 2902428689909.0,
                -2682348792572.0 / 7519795681897.0,
                12662868775082.0 / 11960479115383.0,
                3355817975965.0 / 11060851509271.0,
            ],
            &[
                647845179188.0 / 3216320057751.0,
                73281519250.0 / 8382639484533.0,
                552539513391.0 / 3454668386233.0,
                3354512671639.0 / 8306763924573.0,
                4040.0 / 17871.0,
            ],
        ]),
    }),
    b: &KC4_B,
    rosenbrock: None,
    b_err: Some(&[
        KC4_B[0] - KC4_BHAT[0],
        KC4_B[1] - KC4_BHAT[1],
        KC4_B[2] - KC4_BHAT[2],
        KC4_B[3] - KC4_BHAT[3],
        KC4_B[4] - KC4_BHAT[4],
        KC4_B[5] - KC4_BHAT[5],
    ]),
    order: 4,
    error_order: 3,
    interpolant: Interpolant::Weights(kencarp4_dense),
};

const KC5_G: f64 = 41.0 / 200.0;
const KC5_B: [f64; 8] = [
    -872700587467.0 / 9133579230613.0,
    0.0,
    0.0,
    22348218063261.0 / 9555858737531.0,
    -1143369518992.0 / 8141816002931.0,
    -39379526789629.0 / 19018526304540.0,
    32727382324388.0 / 42900044865799.0,
    KC5_G,
];
const KC5_BHAT: [f64; 8] = [
    -975461918565.0 / 9796059967033.0,
    0.0,
    0.0,
    78070527104295.0 / 32432590147079.0,
    -548382580838.0 / 3424219808633.0,
    -33438840321285.0 / 15594753105479.0,
    3629800801594.0 / 4656183773603.0,
    4035322873751.0 / 18575991585200.0,
];
const KC5_C: [f64; 8] = [
    0.0,
    0.41,
    2935347310677.0 / 11292855782101.0,
    1426016391358.0 / 7196633302097.0,
    0.92,
    0.24,
    0.6,
    1.0,
];

/// Third-order dense output of [`KENCARP5`], Kennedy and Carpenter's `b*_i(θ)`.
fn kencarp5_dense(t: f64, w: &mut [f64]) {
    const P: [[f64; 3]; 8] = [
        [
            -9257016797708.0 / 5021505065439.0,
            43486358583215.0 / 12773830924787.0,
            -17674230611817.0 / 10670229744614.0,
        ],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [
            26096422576131.0 / 11239449250142.0,
            -91478233927265.0 / 11067650958493.0,
            65168852399939.0 / 7868540260826.0,
        ],
        [
            92396832856987.0 / 20362823103730.0,
            -79368583304911.0 / 10890268929626.0,
            15494834004392.0 / 5936557850923.0,
        ],
        [
            30029262896817.0 / 10175596800299.0,
            -12239297817655.0 / 9152339842473.0,
            -99329723586156.0 / 26959484932159.0,
        ],
        [
            -26136350496073.0 / 3983972220547.0,
            115839755401235.0 / 10719374521269.0,
            -19024464361622.0 / 5461577185407.0,
        ],
        [
            -5289405421727.0 / 3760307252460.0,
            5843115559534.0 / 2180450260947.0,
            -6511271360970.0 / 6095937251113.0,
        ],
    ];
    for (wi, p) in w.iter_mut().zip(&P) {
        *wi = t * ((p[0] * t + p[1]) * t + p[2]);
    }
}

/// Kennedy and Carpenter's `ARK5(4)8L[2]SA` (diffrax's `KenCarp5`): an IMEX method of order 5
/// with an embedded fourth-order estimate, eight stages, third-order dense output; its
/// implicit part L-stable and stiffly accurate (Kennedy and Carpenter 2003, as
/// [`KENCARP3`]).
pub const KENCARP5: ButcherTableau = ButcherTableau {
    name: "kencarp5",
    c: &KC5_C,
    a: &[
        &[KC5_G],
        &[41.0 / 400.0, -567603406766.0 / 11931857230679.0],
        &[
            683785636431.0 / 9252920307686.0,
            0.0,
            -110385047103.0 / 1367015193373.0,
        ],
        &[
            3016520224154.0 / 10081342136671.0,
            0.0,
            30586259806659.0 / 12414158314087.0,
            -22760509404356.0 / 11113319521817.0,
        ],
        &[
            218866479029.0 / 1489978393911.0,
            0.0,
            638256894668.0 / 5436446318841.0,
            -1179710474555.0 / 5321154724896.0,
            -60928119172.0 / 8023461067671.0,
        ],
        &[
            1020004230633.0 / 5715676835656.0,
            0.0,
            25762820946817.0 / 25263940353407.0,
            -2161375909145.0 / 9755907335909.0,
            -211217309593.0 / 5846859502534.0,
            // …040749 as Kennedy and Carpenter print it (and SUNDIALS, PETSc); diffrax's
            // copy reads …040719, which leaves this row's sum off `c` by 2e-12.
            -4269925059573.0 / 7827059040749.0,
        ],
        &[
            KC5_B[0], KC5_B[1], KC5_B[2], KC5_B[3], KC5_B[4], KC5_B[5], KC5_B[6],
        ],
    ],
    implicit: Some(Implicit {
        gamma: KC5_G,
        // diffrax's: linear extrapolation from an earlier stage.
        predictor: &[
            &[1.0],
            &[1.0 - KC5_C[2] / KC5_C[1], KC5_C[2] / KC5_C[1]],
            &[1.0 - KC5_C[3] / KC5_C[1], KC5_C[3] / KC5_C[1], 0.0],
            &[1.0 - KC5_C[4] / KC5_C[1], KC5_C[4] / KC5_C[1], 0.0, 0.0],
            &[
                1.0 - KC5_C[5] / KC5_C[2],
                0.0,
                KC5_C[5] / KC5_C[2],
                0.0,
                0.0,
            ],
            &[
                1.0 - KC5_C[6] / KC5_C[4],
                0.0,
                0.0,
                0.0,
                KC5_C[6] / KC5_C[4],
                0.0,
            ],
            &[
                1.0 - KC5_C[7] / KC5_C[4],
                0.0,
                0.0,
                0.0,
                KC5_C[7] / KC5_C[4],
                0.0,
                0.0,
            ],
        ],
        explicit: Some(&[
            &[0.41],
            &[
                367902744464.0 / 2072280473677.0,
                677623207551.0 / 8224143866563.0,
            ],
            &[
                1268023523408.0 / 10340822734521.0,
                0.0,
                1029933939417.0 / 13636558850479.0,
            ],
            &[
                14463281900351.0 / 6315353703477.0,
                0.0,
                66114435211212.0 / 5879490589093.0,
                -54053170152839.0 / 4284798021562.0,
            ],
            &[
                14090043504691.0 / 34967701212078.0,
                0.0,
                15191511035443.0 / 11219624916014.0,
                -18461159152457.0 / 12425892160975.0,
                -281667163811.0 / 9011619295870.0,
            ],
            &[
                19230459214898.0 / 13134317526959.0,
                0.0,
                21275331358303.0 / 2942455364971.0,
                -38145345988419.0 / 4862620318723.0,
                -0.125,
                -0.125,
            ],
            &[
                -19977161125411.0 / 11928030595625.0,
                0.0,
                -40795976796054.0 / 6384907823539.0,
                177454434618887.0 / 12078138498510.0,
                782672205425.0 / 8267701900261.0,
                -69563011059811.0 / 9646580694205.0,
                7356628210526.0 / 4942186776405.0,
            ],
        ]),
    }),
    b: &KC5_B,
    rosenbrock: None,
    b_err: Some(&[
        KC5_B[0] - KC5_BHAT[0],
        KC5_B[1] - KC5_BHAT[1],
        KC5_B[2] - KC5_BHAT[2],
        KC5_B[3] - KC5_BHAT[3],
        KC5_B[4] - KC5_BHAT[4],
        KC5_B[5] - KC5_BHAT[5],
        KC5_B[6] - KC5_BHAT[6],
        KC5_B[7] - KC5_BHAT[7],
    ]),
    order: 5,
    error_order: 4,
    interpolant: Interpolant::Weights(kencarp5_dense),
};

/// [`Interpolant::Rodas`] in stage weights: `w_i(θ) = θ b_i + θ(1 − θ) Σ_r θ^r H_ri`.
fn rodas_dense(theta: f64, b: &[f64], h: &[&[f64]], out: &mut [f64]) {
    let bump = theta * (1.0 - theta);
    for (i, o) in out.iter_mut().enumerate() {
        let mut p = 0.0;
        for row in h.iter().rev() {
            p = p * theta + row[i];
        }
        *o = theta * b[i] + bump * p;
    }
}

// Stiffly accurate: `y1` is the last stage's state plus its increment, so the last rows of
// `a` are the heads of `b`.
const RODAS4_B: [f64; 6] = [
    1.221224509226641,
    6.019134481288629,
    12.53708332932087,
    -0.687886036105895,
    1.0,
    1.0,
];

const RODAS4_H: [&[f64]; 2] = [
    &[
        10.12623508344586,
        -7.487995877610167,
        -34.80091861555747,
        -7.992771707568823,
        1.025137723295662,
        0.0,
    ],
    &[
        -0.6762803392801253,
        6.087714651680015,
        16.43084320892478,
        24.76722511418386,
        -6.594389125716872,
        0.0,
    ],
];

/// RODAS4 (Hairer and Wanner, *Solving ODEs II*, IV.7; their `rodas.f`): a stiffly accurate,
/// L-stable Rosenbrock method of order 4 with an embedded order 3, six stages (six
/// evaluations and six linear solves with one LU factorization per step), and a
/// third-order dense output.
pub const RODAS4: ButcherTableau = ButcherTableau {
    name: "rodas4",
    c: &[0.0, 0.386, 0.21, 0.63, 1.0, 1.0],
    a: &[
        &[1.544],
        &[0.9466785280815826, 0.2557011698983284],
        &[3.314825187068521, 2.896124015972201, 0.9986419139977817],
        RODAS4_B.split_at(4).0,
        RODAS4_B.split_at(5).0,
    ],
    implicit: None,
    rosenbrock: Some(Rosenbrock {
        gamma: 0.25,
        coupling: &[
            &[-5.6688],
            &[-2.430093356833875, -0.2063599157091915],
            &[-0.1073529058151375, -9.594562251023355, -20.47028614809616],
            &[
                7.496443313967647,
                -10.24680431464352,
                -33.99990352819905,
                11.7089089320616,
            ],
            &[
                8.083246795921522,
                -7.981132988064893,
                -31.52159432874371,
                16.31930543123136,
                -6.058818238834054,
            ],
        ],
        time: &[0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0],
        w_method: false,
    }),
    b: &RODAS4_B,
    // The last stage is the difference between the solution and the embedded one.
    b_err: Some(&[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    order: 4,
    error_order: 3,
    interpolant: Interpolant::Rodas(&RODAS4_H),
};

const RODAS4P_B: [f64; 6] = [
    -7.170454962423024,
    -4.741636671481785,
    -16.31002631330971,
    -1.062004044111401,
    1.0,
    1.0,
];

const RODAS4P_H: [&[f64]; 2] = [
    &[
        25.09876703708589,
        11.62013104361867,
        28.49148307714626,
        -5.664021568594133,
        0.0,
        0.0,
    ],
    &[
        1.638054557396973,
        -0.7373619806678748,
        8.47791821923899,
        15.9925314877952,
        -1.882352941176471,
        0.0,
    ],
];

/// RODAS4P (Steinebach's RODASP, 1995; coefficients as in OrdinaryDiffEq.jl): RODAS4's structure
/// with coefficients that also satisfy the Prothero–Robinson conditions, so that it keeps
/// its order on stiff problems whose slow solution is forced (where RODAS4 loses it), and
/// on discretized parabolic problems. Order 4(3), six stages, third-order dense output.
pub const RODAS4P: ButcherTableau = ButcherTableau {
    name: "rodas4p",
    c: &[0.0, 0.75, 0.21, 0.63, 1.0, 1.0],
    a: &[
        &[3.0],
        &[1.831036793486759, 0.4955183967433795],
        &[2.304376582692669, -0.05249275245743001, -1.176798761832782],
        RODAS4P_B.split_at(4).0,
        RODAS4P_B.split_at(5).0,
    ],
    implicit: None,
    rosenbrock: Some(Rosenbrock {
        gamma: 0.25,
        coupling: &[
            &[-12.0],
            &[-8.791795173947035, -2.207865586973518],
            &[10.81793056857153, 6.780270611428266, 19.5348594464241],
            &[
                34.19095006749676,
                15.49671153725963,
                54.7476087596413,
                14.16005392148534,
            ],
            &[
                34.62605830930532,
                15.30084976114473,
                56.99955578662667,
                18.40807009793095,
                -5.714285714285717,
            ],
        ],
        time: &[0.25, -0.5, -0.023504, -0.0362, 0.0, 0.0],
        w_method: false,
    }),
    b: &RODAS4P_B,
    b_err: Some(&[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    order: 4,
    error_order: 3,
    interpolant: Interpolant::Rodas(&RODAS4P_H),
};

const RODAS5P_G: f64 = 0.21193756319429014;

const RODAS5P_B: [f64; 8] = [
    -7.502846399306121,
    2.561846144803919,
    -11.627539656261098,
    -0.18268767659942256,
    0.030198172008377946,
    1.0,
    1.0,
    1.0,
];

const RODAS5P_H: [&[f64]; 3] = [
    &[
        25.948786856663858,
        -2.5579724845846235,
        10.433815404888879,
        -2.3679251022685204,
        0.524948541321073,
        1.1241088310450404,
        0.4272876194431874,
        -0.17202221070155493,
    ],
    &[
        -9.91568850695171,
        -0.9689944594115154,
        3.0438037242978453,
        -24.495224566215796,
        20.176138334709044,
        15.98066361424651,
        -6.789040303419874,
        -6.710236069923372,
    ],
    &[
        11.419903575922262,
        2.8879645146136994,
        72.92137995996029,
        80.12511834622643,
        -52.072871366152654,
        -59.78993625266729,
        -0.15582684282751913,
        4.883087185713722,
    ],
];

/// Rodas5P (Steinebach, "Construction of Rosenbrock–Wanner method Rodas5P and numerical
/// benchmarks within the Julia Differential Equations package", BIT 2023): a stiffly
/// accurate, L-stable Rosenbrock method of order 5 with an embedded order 4, eight stages
/// (eight evaluations and eight linear solves with one LU factorization per step) and a
/// fourth-order dense output. Coefficients as in OrdinaryDiffEq.jl.
pub const RODAS5P: ButcherTableau = ButcherTableau {
    name: "rodas5p",
    c: &[
        0.0,
        0.6358126895828704,
        0.4095798393397535,
        0.9769306725060716,
        0.4288403609558664,
        1.0,
        1.0,
        1.0,
    ],
    a: &[
        &[3.0],
        &[2.849394379747939, 0.45842242204463923],
        &[-6.954028509809101, 2.489845061869568, -10.358996098473584],
        &[
            2.8029986275628964,
            0.5072464736228206,
            -0.3988312541770524,
            -0.04721187230404641,
        ],
        RODAS5P_B.split_at(5).0,
        RODAS5P_B.split_at(6).0,
        RODAS5P_B.split_at(7).0,
    ],
    implicit: None,
    rosenbrock: Some(Rosenbrock {
        gamma: RODAS5P_G,
        coupling: &[
            &[-14.155112264123755],
            &[-17.97296035885952, -2.859693295451294],
            &[147.12150275711716, -1.41221402718213, 71.68940251302358],
            &[
                165.43517024871676,
                -0.4592823456491126,
                42.90938336958603,
                -5.961986721573306,
            ],
            &[
                24.854864614690072,
                -3.0009227002832186,
                47.4931110020768,
                5.5814197821558125,
                -0.6610691825249471,
            ],
            &[
                30.91273214028599,
                -3.1208243349937974,
                77.79954646070892,
                34.28646028294783,
                -19.097331116725623,
                -28.087943162872662,
            ],
            &[
                37.80277123390563,
                -3.2571969029072276,
                112.26918849496327,
                66.9347231244047,
                -40.06618937091002,
                -54.66780262877968,
                -9.48861652309627,
            ],
        ],
        time: &[
            RODAS5P_G,
            -0.42387512638858027,
            -0.3384627126235924,
            1.8046452872882734,
            2.325825639765069,
            0.0,
            0.0,
            0.0,
        ],
        w_method: false,
    }),
    b: &RODAS5P_B,
    b_err: Some(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    order: 5,
    error_order: 4,
    interpolant: Interpolant::Rodas(&RODAS5P_H),
};

/// ROS34PW2 (Rang and Angermann, "New Rosenbrock W-methods of order 3 for partial
/// differential algebraic equations of index 1", BIT 2005): a stiffly accurate, L-stable
/// Rosenbrock method of order 3 with an embedded order 2, four stages (four evaluations and
/// four linear solves with one LU factorization per step), and a third-order dense output.
/// Its order conditions hold for parabolic problems and index-1 DAEs, and it keeps order 2
/// as a W-method, with an inexact Jacobian. Coefficients from Rang and Angermann's `α` and
/// `Γ` (as PETSc's `TSROSWRA34PW2` lists them, with its interpolation weights), in Hairer
/// and Wanner's transformed form: `a = α Γ⁻¹`, `C = diag(1/γ) − Γ⁻¹`, `b = b̃ Γ⁻¹`.
pub const ROS34PW2: ButcherTableau = ButcherTableau {
    name: "ros34pw2",
    c: &[0.0, 0.871733043016918, 0.7315799577888524, 1.0],
    a: &[
        &[2.0],
        &[1.4192173174557652, -0.2592322116729698],
        ROS34PW2_B.split_at(3).0,
    ],
    implicit: None,
    rosenbrock: Some(Rosenbrock {
        gamma: ROS34PW2_G,
        coupling: &[
            &[-4.588560720558084],
            &[-4.184760482319161, 0.285192017355496],
            &[-6.36817920012836, -6.795620944466837, 2.870098604331055],
        ],
        time: &[ROS34PW2_G, -ROS34PW2_G, -0.41333337623388644, 0.0],
        w_method: true,
    }),
    b: &ROS34PW2_B,
    b_err: Some(&[
        0.27774994764797034,
        -1.4032398951759986,
        1.7726301276675511,
        0.5,
    ]),
    order: 3,
    error_order: 2,
    interpolant: Interpolant::Weights(ros34pw2_dense),
};

const ROS34PW2_G: f64 = 0.435866521508459;

const ROS34PW2_B: [f64; 4] = [
    4.184760482319163,
    -0.28519201735549543,
    2.2942803602790423,
    1.0,
];

/// ROS34PW2's dense output: `w_i(θ) = Σ_r W_ir θ^(r+1)`, PETSc's interpolation weights in
/// the transformed form (`W = Γ⁻ᵀ B`); `w(1) = b`.
fn ros34pw2_dense(theta: f64, out: &mut [f64]) {
    const W: [[f64; 3]; 4] = [
        [0.8326590231543833, 4.520784200520353, -1.1686827413555747],
        [-1.4616213371246556, -4.727954322284011, 5.904383642053172],
        [0.0, 9.752939685168172, -7.458659324889134],
        [-2.398120075195581, 5.50195979011212, -2.103839714916539],
    ];
    for (o, w) in out.iter_mut().zip(W) {
        *o = theta * (w[0] + theta * (w[1] + theta * w[2]));
    }
}
