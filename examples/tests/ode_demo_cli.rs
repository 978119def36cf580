//! torchdiffeq's spiral demo refuses bad options by name, before any work (`--test-freq 0`
//! panicked on a remainder by zero at the first iteration; `--batch-size 0` and `--lr nan`
//! trained a step and then failed in the ODE solve, "non-finite value at t = 0").

mod common;

use common::fails_saying;
use std::process::Command;

#[test]
fn bad_options_are_refused() {
    for (args, says) in [
        (&["--test-freq", "0"][..], "--test-freq"),
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--lr", "nan"][..], "--lr"),
        (&["--batch-time", "1"][..], "--batch-time"),
        (&["--rtol", "nan"][..], "rtol"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ode-demo"))
            .args(["--device", "cpu"])
            .args(args)
            .output()
            .expect("ode-demo runs");
        fails_saying(&o, says);
    }
}
