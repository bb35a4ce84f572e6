//! Checkpoints are portable across backends (built with `--features wgpu`; `cargo xtask parity`
//! runs it on the machine's Vulkan driver, in CI Mesa's software one): the default main job,
//! shortened, trains on `--device wgpu` with the same first losses as on the CPU; the CPU reads
//! and samples the wgpu run's checkpoint and wgpu the CPU run's, and both devices draw the same
//! images from one checkpoint.
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn diffusion(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_diffusion")).args(args).output().expect("diffusion runs");
    assert!(out.status.success(), "diffusion {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diffusion-backends-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The per-step `loss` and `grad_norm` columns of a run's metrics.csv (training rows).
fn losses(run: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col =
        |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} column"));
    let (split, loss, grad) = (col("split"), col("loss"), col("grad_norm"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|r| r[split] == "train")
        .map(|r| (r[loss].parse().unwrap(), r[grad].parse().unwrap()))
        .collect()
}

/// The default preset for two steps at batch 8 on `device`; its checkpoint.
fn train(device: &str, d: &Path) -> (PathBuf, Vec<(f64, f64)>) {
    let run = d.join(format!("run-{device}"));
    diffusion(&[
        "--device",
        device,
        "train",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "2",
        "--out",
        s(&run),
        "--plain",
    ]);
    (run.join("checkpoints/step-00000002.ckpt"), losses(&run))
}

fn sample(device: &str, ckpt: &Path, out: &Path) -> Vec<u8> {
    diffusion(&[
        "--device",
        device,
        "sample",
        "--checkpoint",
        s(ckpt),
        "--num",
        "4",
        "--respace",
        "ddim10",
        "--out",
        s(out),
    ]);
    std::fs::read(out).expect("the sample image")
}

#[test]
fn devices_reports_the_wgpu_adapter() {
    let out = diffusion(&["--device", "wgpu", "devices"]);
    assert!(out.contains("wgpu: adapter "), "{out}");
    assert!(out.contains("1 + 2 + 3 = 6"), "{out}");
}

#[test]
fn checkpoints_move_between_the_cpu_and_wgpu() {
    let d = dir("portable");
    let (on_wgpu, wgpu_losses) = train("wgpu", &d);
    let (on_cpu, cpu_losses) = train("cpu", &d);
    assert_eq!(wgpu_losses.len(), cpu_losses.len(), "training rows");
    assert!(!cpu_losses.is_empty(), "the runs logged their steps");
    for (step, (w, c)) in wgpu_losses.iter().zip(&cpu_losses).enumerate() {
        assert!(
            (w.0 - c.0).abs() <= 1e-4 * c.0.abs(),
            "step {step}: loss {} on wgpu, {} on the CPU",
            w.0,
            c.0
        );
        assert!(
            (w.1 - c.1).abs() <= 1e-3 * c.1.abs(),
            "step {step}: gradient norm {} on wgpu, {} on the CPU",
            w.1,
            c.1
        );
    }
    // Each device samples the other's checkpoint, and both give the same 8-bit images.
    for ckpt in [&on_wgpu, &on_cpu] {
        let a = sample("cpu", ckpt, &d.join("a.png"));
        let b = sample("wgpu", ckpt, &d.join("b.png"));
        assert!(a == b, "{}: the CPU's and wgpu's samples differ", ckpt.display());
    }
    std::fs::remove_dir_all(&d).ok();
}
