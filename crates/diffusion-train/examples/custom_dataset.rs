//! diffusion-train with a dataset of your own: points on a noisy ring, built in code, trained
//! with the `tiny-mlp` recipe through burn's Learner (checkpoints, metrics, EMA, resume — all as
//! for the built-in datasets).
//!
//! Run: `cargo run -p diffusion-train --example custom_dataset [-- STEPS]`.

use std::sync::Arc;

use burn::tensor::Device;
use diffusion_train::data::Data;
use diffusion_train::log::read_metrics;
use diffusion_train::{ProgressStyle, RunOptions, TrainConfig, train};

/// `n` points on a ring of radius 1.5 with a little radial noise (a fixed, seeded generator).
fn ring(n: usize) -> Vec<[f32; 2]> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let a = std::f64::consts::TAU * uniform();
            let r = 1.5 + 0.05 * (uniform() - 0.5);
            [(r * a.cos()) as f32, (r * a.sin()) as f32]
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(300);
    let mut cfg = TrainConfig::preset("tiny-mlp")?;
    cfg.data = "ring (built in code)".into();
    cfg.steps = steps;
    cfg.batch_size = 128;
    cfg.checkpoint_every = steps / 3;
    cfg.sample.every_checkpoints = 0;
    let dir = std::env::temp_dir().join(format!("diffusion-train-example-{}", std::process::id()));
    let summary = train(
        cfg,
        RunOptions {
            run_dir: dir.clone(),
            devices: vec![Device::flex()],
            progress: ProgressStyle::Quiet,
            data: Some(Arc::new(Data::Points(ring(4096)))),
            ..Default::default()
        },
    )?;
    let rows = read_metrics(&dir.join("metrics.csv"))?;
    let train_rows: Vec<_> = rows.iter().filter(|r| r.split == "train").collect();
    let k = (train_rows.len() / 10).max(1);
    let mean =
        |rs: &[&diffusion_train::log::MetricsRow]| rs.iter().map(|r| r.loss).sum::<f64>() / rs.len() as f64;
    let (first, last) = (mean(&train_rows[..k]), mean(&train_rows[train_rows.len() - k..]));
    println!(
        "{} steps, checkpoint {}: training loss {first:.3} (first 10 %) -> {last:.3} (last 10 %)",
        summary.steps_done,
        summary.last_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    );
    assert!(last < first, "the loss should fall on the ring");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
