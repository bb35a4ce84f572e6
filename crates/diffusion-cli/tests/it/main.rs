//! End-to-end tests of the `diffusion` binary, and the workspace's architecture invariants.

mod architecture;
mod eval;
mod latent;
mod model;
mod sample;
mod schedule;
mod train;

use std::process::{Command, Output};

/// Runs the `diffusion` binary built for this test run.
pub fn diffusion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffusion")).args(args).output().expect("the diffusion binary runs")
}

/// stdout of a successful run (panics with stderr otherwise).
#[track_caller]
pub fn ok(args: &[&str]) -> String {
    let out = diffusion(args);
    assert!(out.status.success(), "diffusion {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// stderr of a failed run (panics if it succeeded).
#[track_caller]
pub fn fails(args: &[&str]) -> String {
    let out = diffusion(args);
    assert!(!out.status.success(), "diffusion {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8 output")
}
