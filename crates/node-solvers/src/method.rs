//! The named methods, for options and command lines (`--method dopri5`).

use crate::error::SolverError;
use crate::tableau::{self, ButcherTableau};
use std::fmt;
use std::str::FromStr;

/// A solver method: a Runge–Kutta method (explicit, or diagonally implicit for stiff
/// problems; [`Method::tableau`]), or an Adams multistep method (`explicit_adams`,
/// `implicit_adams`, `adams`; see [`crate::adams`]).
/// `FromStr`/`Display` use the names in [`Method::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Method {
    /// Forward Euler, order 1, fixed steps.
    Euler,
    /// Explicit midpoint, order 2, fixed steps.
    Midpoint,
    /// Heun (explicit trapezoid), order 2, fixed steps.
    Heun2,
    /// Ralston, order 2, fixed steps.
    Ralston,
    /// Heun's third-order method, fixed steps.
    Heun3,
    /// Classic RK4, fixed steps.
    Rk4,
    /// Kutta's 3/8 rule, order 4, fixed steps (torchdiffeq's `rk4`).
    Rk38,
    /// Heun–Euler 2(1), adaptive.
    AdaptiveHeun,
    /// Fehlberg 2(1), adaptive.
    Fehlberg2,
    /// Bogacki–Shampine 3(2), adaptive, FSAL.
    Bosh3,
    /// Dormand–Prince 5(4), adaptive, FSAL. The default.
    #[default]
    Dopri5,
    /// Tsitouras 5(4), adaptive, FSAL.
    Tsit5,
    /// Prince–Dormand 8(7), adaptive, FSAL.
    Dopri8,
    /// Backward Euler, order 1, L-stable, implicit; adaptive with forward Euler as the
    /// embedded estimate, or fixed steps.
    ImplicitEuler,
    /// Kværnø 3(2), L-stable ESDIRK, implicit, adaptive, FSAL.
    Kvaerno3,
    /// Kværnø 5(4), L-stable ESDIRK, implicit, adaptive, FSAL.
    Kvaerno5,
    /// Kennedy–Carpenter 3(2) IMEX (additive Runge–Kutta), adaptive: for a
    /// [`crate::Split`] field `f_E + f_I`, the stiff part `f_I` implicit (L-stable, by
    /// Newton's method), the other part explicit. Any other field is treated implicitly
    /// as a whole.
    KenCarp3,
    /// Kennedy–Carpenter 4(3) IMEX, adaptive, as [`Method::KenCarp3`].
    KenCarp4,
    /// Kennedy–Carpenter 5(4) IMEX, adaptive, as [`Method::KenCarp3`].
    KenCarp5,
    /// Hairer–Wanner RODAS4: Rosenbrock 4(3), L-stable, stiffly accurate, adaptive. Each
    /// step rebuilds the Jacobian and solves one linear system per stage (six), with no
    /// Newton iterations.
    Rodas4,
    /// RODAS4P: [`Method::Rodas4`]'s structure with coefficients that keep the order on
    /// stiff problems whose slow solution is forced (Prothero–Robinson) and on parabolic
    /// ones, where RODAS4 loses it.
    Rodas4P,
    /// Steinebach's Rodas5P: Rosenbrock 5(4), L-stable, stiffly accurate, adaptive, eight
    /// stages, as [`Method::Rodas4`]. Julia's recommended method for stiff problems at
    /// moderate tolerances.
    Rodas5P,
    /// Rang and Angermann's ROS34PW2: Rosenbrock 3(2), L-stable, stiffly accurate, adaptive,
    /// four stages, as [`Method::Rodas4`]; a W-method: its order holds with an approximate
    /// Jacobian, so one Jacobian can serve many steps
    /// ([`crate::SolveOptions::jacobian_reuse`]), for fields whose Jacobian is costly.
    Ros34pw2,
    /// Runge–Kutta–Chebyshev (Sommeijer, Shampine & Verwer's RKC): explicit, second order,
    /// as many stages per step as the spectral radius of `∂f/∂y` needs for stability (their
    /// number grows with its square root), for mildly stiff problems with eigenvalues near the
    /// negative real axis (diffusion); see [`crate::rkc`]. Adaptive or fixed steps.
    Rkc,
    /// Adams–Bashforth, fixed steps (torchdiffeq's `explicit_adams`): one evaluation per
    /// step, of order [`crate::SolveOptions::adams_order`] (4 by default), started by
    /// Runge–Kutta steps.
    ExplicitAdams,
    /// Adams–Bashforth–Moulton predictor–corrector (PECE), fixed steps (torchdiffeq's
    /// `implicit_adams`): two evaluations per step, of order
    /// [`crate::SolveOptions::adams_order`], started by Runge–Kutta steps. Not a stiff
    /// method: its corrector is applied once, not solved by Newton iterations.
    ImplicitAdams,
    /// Adams–Bashforth–Moulton (PECE) with error-controlled variable steps and variable order
    /// (2 up to [`crate::SolveOptions::adams_order`], 12 by default): two evaluations per
    /// step whatever its order, the corrector's difference from the predictor as the error
    /// estimate. With fixed steps, `implicit_adams`.
    Adams,
}

impl Method {
    /// Every method: the Runge–Kutta ones with a Butcher tableau
    /// ([`Method::RUNGE_KUTTA`]), `rkc`, then the Adams ones.
    pub const ALL: [Method; 27] = {
        let n = Method::RUNGE_KUTTA.len();
        let mut all = [Method::Adams; 27];
        let mut i = 0;
        while i < n {
            all[i] = Method::RUNGE_KUTTA[i];
            i += 1;
        }
        all[n] = Method::Rkc;
        all[n + 1] = Method::ExplicitAdams;
        all[n + 2] = Method::ImplicitAdams;
        all
    };

    /// The Runge–Kutta methods: the explicit ones in order of increasing cost, then the
    /// implicit ones, then the IMEX ones, then the Rosenbrock ones.
    pub const RUNGE_KUTTA: [Method; 23] = [
        Method::Euler,
        Method::Midpoint,
        Method::Heun2,
        Method::Ralston,
        Method::Heun3,
        Method::Rk4,
        Method::Rk38,
        Method::AdaptiveHeun,
        Method::Fehlberg2,
        Method::Bosh3,
        Method::Dopri5,
        Method::Tsit5,
        Method::Dopri8,
        Method::ImplicitEuler,
        Method::Kvaerno3,
        Method::Kvaerno5,
        Method::KenCarp3,
        Method::KenCarp4,
        Method::KenCarp5,
        Method::Rodas4,
        Method::Rodas4P,
        Method::Rodas5P,
        Method::Ros34pw2,
    ];

    /// A Runge–Kutta method's coefficients; `None` for `rkc` (whose stages vary from step to
    /// step) and the Adams methods.
    pub fn tableau(self) -> Option<&'static ButcherTableau> {
        Some(match self {
            Method::Euler => &tableau::EULER,
            Method::Midpoint => &tableau::MIDPOINT,
            Method::Heun2 => &tableau::HEUN2,
            Method::Ralston => &tableau::RALSTON,
            Method::Heun3 => &tableau::HEUN3,
            Method::Rk4 => &tableau::RK4,
            Method::Rk38 => &tableau::RK38,
            Method::AdaptiveHeun => &tableau::ADAPTIVE_HEUN,
            Method::Fehlberg2 => &tableau::FEHLBERG2,
            Method::Bosh3 => &tableau::BOSH3,
            Method::Dopri5 => &tableau::DOPRI5,
            Method::Tsit5 => &tableau::TSIT5,
            Method::Dopri8 => &tableau::DOPRI8,
            Method::ImplicitEuler => &tableau::IMPLICIT_EULER,
            Method::Kvaerno3 => &tableau::KVAERNO3,
            Method::Kvaerno5 => &tableau::KVAERNO5,
            Method::KenCarp3 => &tableau::KENCARP3,
            Method::KenCarp4 => &tableau::KENCARP4,
            Method::KenCarp5 => &tableau::KENCARP5,
            Method::Rodas4 => &tableau::RODAS4,
            Method::Rodas4P => &tableau::RODAS4P,
            Method::Rodas5P => &tableau::RODAS5P,
            Method::Ros34pw2 => &tableau::ROS34PW2,
            Method::Rkc | Method::ExplicitAdams | Method::ImplicitAdams | Method::Adams => {
                return None
            }
        })
    }

    /// The Runge–Kutta coefficients that `feature` needs, or an error naming the method.
    pub(crate) fn runge_kutta(self, feature: &str) -> candle_core::Result<&'static ButcherTableau> {
        self.tableau().ok_or_else(|| {
            SolverError::InvalidOptions(format!(
                "{feature} needs a Runge–Kutta method with a Butcher tableau, and `{self}` is {}",
                if self.is_multistep() {
                    "a multistep method"
                } else {
                    "a Runge–Kutta–Chebyshev method, whose stages vary from step to step"
                }
            ))
            .into()
        })
    }

    /// The method's name, as [`FromStr`] parses it.
    pub fn name(self) -> &'static str {
        match self {
            Method::ExplicitAdams => "explicit_adams",
            Method::ImplicitAdams => "implicit_adams",
            Method::Adams => "adams",
            Method::Rkc => "rkc",
            m => m.tableau().map_or("", |t| t.name),
        }
    }

    /// True for the Adams methods, which step with values of earlier steps.
    pub fn is_multistep(self) -> bool {
        matches!(
            self,
            Method::ExplicitAdams | Method::ImplicitAdams | Method::Adams
        )
    }

    /// True when the method has an error estimate and can choose its own steps.
    pub fn is_adaptive(self) -> bool {
        match self.tableau() {
            Some(t) => t.is_adaptive(),
            None => matches!(self, Method::Adams | Method::Rkc),
        }
    }

    /// True for the implicit methods (for stiff problems): their stages solve equations in
    /// the state by Newton's method, or linear systems for the Rosenbrock methods, see
    /// [`crate::SolveOptions::jacobian`]. False for `implicit_adams`, whose corrector is
    /// applied once. They take f32 and f64 states, not half-precision ones.
    pub fn is_implicit(self) -> bool {
        self.tableau().is_some_and(ButcherTableau::is_implicit)
    }

    /// True for the Rosenbrock methods ([`Method::Rodas4`], [`Method::Rodas4P`],
    /// [`Method::Rodas5P`], [`Method::Ros34pw2`]).
    pub fn is_rosenbrock(self) -> bool {
        self.tableau().is_some_and(ButcherTableau::is_rosenbrock)
    }

    /// True for the Rosenbrock W-methods ([`Method::Ros34pw2`]), whose order holds with a
    /// Jacobian kept across steps ([`crate::SolveOptions::jacobian_reuse`]).
    pub fn is_w_method(self) -> bool {
        self.tableau().is_some_and(ButcherTableau::is_w_method)
    }

    /// True for the IMEX methods ([`Method::KenCarp3`], 4 and 5), which treat the two parts
    /// of a [`crate::Split`] field differently.
    pub fn is_imex(self) -> bool {
        self.tableau().is_some_and(ButcherTableau::is_imex)
    }

    /// Order of accuracy of the propagated solution; for the Adams methods, the default
    /// [`crate::SolveOptions::adams_order`]: 4, and for `adams` (variable order) the highest.
    pub fn order(self) -> usize {
        match self {
            Method::Adams => crate::adams::MAX_ORDER,
            Method::Rkc => 2,
            m => m.tableau().map_or(crate::adams::DEFAULT_ORDER, |t| t.order),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of parsing an unknown method name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownMethod(pub String);

impl fmt::Display for UnknownMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown method `{}` (expected one of: {})",
            self.0,
            names_of(&Method::ALL, Method::name)
        )
    }
}

impl std::error::Error for UnknownMethod {}

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let aliases = [
            ("heun", Method::Heun2),
            ("rk4_38", Method::Rk38),
            ("rk4_3/8", Method::Rk38),
            ("rk38_rule", Method::Rk38),
            ("heun_euler", Method::AdaptiveHeun),
            ("backward_euler", Method::ImplicitEuler),
            ("fixed_adams", Method::ImplicitAdams),
        ];
        find_named(s, &Method::ALL, Method::name, &aliases)
            .ok_or_else(|| UnknownMethod(s.to_string()))
    }
}

/// The method named `s` among `all` (by `name`) and `aliases`, ignoring case, surrounding
/// space and `-` for `_`: what the method enums' `FromStr` share.
pub(crate) fn find_named<M: Copy>(
    s: &str,
    all: &[M],
    name: impl Fn(M) -> &'static str,
    aliases: &[(&str, M)],
) -> Option<M> {
    let key = s.trim().to_ascii_lowercase().replace('-', "_");
    aliases
        .iter()
        .find(|(a, _)| *a == key)
        .map(|&(_, m)| m)
        .or_else(|| all.iter().copied().find(|&m| name(m) == key))
}

/// The names of `all`, listed for an error message.
pub(crate) fn names_of<M: Copy>(all: &[M], name: impl Fn(M) -> &'static str) -> String {
    all.iter().map(|&m| name(m)).collect::<Vec<_>>().join(", ")
}
