//! The bouncing ball end to end: in every gradient mode it finds the bounces at their closed
//! form and passes its own gradient check (its exit status says so), writes its plot, and
//! refuses bad options.

mod common;

use common::ok;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bouncing-ball"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .expect("bouncing-ball runs")
}

#[test]
fn bounces_and_gradients_check_out_in_every_mode() {
    let dir = common::tmp("bouncing-ball-cli", "plot");
    let plot = dir.path().join("ball.png");
    let plot_arg = plot.to_str().expect("a UTF-8 path");
    for extra in [
        &["--gradient", "backprop", "--plot", plot_arg][..],
        &["--gradient", "adjoint", "--no-plot", "--drag", "0.5", "4"][..],
        &[
            "--gradient",
            "interpolated",
            "--no-plot",
            "--drag",
            "0.5",
            "4",
        ][..],
        &[
            "--gradient",
            "checkpoint",
            "--no-plot",
            "--drag",
            "0.5",
            "4",
        ][..],
    ] {
        let o = run(extra);
        ok(&o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("gradient check passed"), "{out}");
        assert_eq!(
            out.contains("closed form"),
            !extra.contains(&"--drag"),
            "{out}"
        );
    }
    let png = std::fs::read(&plot).expect("the plot");
    assert_eq!(&png[1..4], b"PNG");
}

#[test]
fn bad_options_are_refused() {
    for (args, says) in [
        (&["--absorption", "1.5"][..], "--absorption"),
        (&["--height", "0.1"][..], "height > radius"),
        (&["--drag=-1"][..], "--drag"),
        (&["0"][..], "--bounces"),
        (&["--tol", "0"][..], "--tol"),
        (&["--gradient", "reversible"][..], "does not locate events"),
    ] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
