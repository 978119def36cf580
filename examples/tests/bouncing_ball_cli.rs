//! The bouncing ball end to end: in every gradient mode it finds the bounces at their closed
//! form and passes its own gradient check (its exit status says so), writes its plot, bounces
//! many balls at once as each alone, and refuses bad options.

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

/// `--balls`: the balls bounced in batched solves land where each bounced alone does (the
/// program fails otherwise), at their closed form, and pass the gradient check, by backprop
/// and by the adjoint.
#[test]
fn many_balls_bounce_as_each_alone() {
    for extra in [
        &["--balls", "6", "5"][..],
        &[
            "--balls",
            "5",
            "--gradient",
            "adjoint",
            "--drag",
            "0.5",
            "4",
        ][..],
    ] {
        let o = run(extra);
        ok(&o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("gradient check passed"), "{out}");
        assert!(
            out.contains("largest difference from the balls bounced one by one: 0.0e0"),
            "{out}"
        );
        assert_eq!(
            out.contains("match their closed form"),
            !extra.contains(&"--drag"),
            "{out}"
        );
    }
}

#[test]
fn bad_options_are_refused() {
    for (args, says) in [
        (&["--absorption", "1.5"][..], "--absorption"),
        (&["--height", "0.1"][..], "height > radius"),
        (&["--drag=-1"][..], "--drag"),
        (&["0"][..], "--bounces"),
        (&["--tol", "0"][..], "--tol"),
        (&["--velocity", "nan"][..], "--velocity"),
        (&["--gradient", "reversible"][..], "does not locate events"),
        (&["--balls", "0"][..], "--balls"),
        (
            &["--balls", "4", "--gradient", "checkpoint"][..],
            "--balls takes --gradient backprop or adjoint",
        ),
    ] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
