//! Training throughput on the CPU (flex) backend, in examples per second: one optimiser step
//! (forward, loss, backward, AdamW, EMA) of diffusion-train's trainer, as a run takes it, for
//! the `tiny` UNet (32×32×3 shapes, L_hybrid, batch 8), the `mnist` UNet (28×28×1, L_simple,
//! batch 8; synthetic images of MNIST's shape, so no download is needed), `cifar10_iddpm`
//! (the cifar10-hybrid preset, batch 2) and the 2-D MLP (swissroll preset, batch 1024).
//!
//! `cargo xtask bench training` (or `cargo bench -p diffusion-benches --bench training`).

/// The same allocator as the `diffusion` binary.
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

use std::hint::black_box;

use burn::tensor::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diffusion_core::{DiffusionConfig, LossKind, ModelMean, ModelVariance};
use diffusion_models::UNetConfig;
use diffusion_models::checkpoint::ModelSpec;
use diffusion_train::TrainConfig;
use diffusion_train::stepper::Stepper;

fn bench_config(c: &mut Criterion, name: &str, cfg: TrainConfig) {
    let device = Device::flex();
    let mut stepper = Stepper::new(&cfg, &device, 4).expect("a valid benchmark config");
    let mut group = c.benchmark_group(format!("train step {name} batch {}", cfg.batch_size));
    group.sample_size(10);
    group.throughput(Throughput::Elements(cfg.batch_size as u64));
    group.bench_function("examples", |b| b.iter(|| black_box(stepper.step())));
    group.finish();
}

fn hybrid() -> DiffusionConfig {
    DiffusionConfig {
        mean: ModelMean::Epsilon,
        variance: ModelVariance::LearnedRange,
        loss: LossKind::RescaledMse,
        ..Default::default()
    }
}

fn bench_training(c: &mut Criterion) {
    diffusion_alloc::keep_freed_memory();
    let mut tiny = TrainConfig::preset("default").unwrap();
    tiny.model = ModelSpec::Unet(UNetConfig::tiny().with_num_classes(Some(4)));
    tiny.image_size = 32;
    tiny.process.config = hybrid();
    tiny.batch_size = 8;
    bench_config(c, "tiny", tiny);

    let mut mnist = TrainConfig::preset("mnist").unwrap();
    mnist.data = "synthetic:1x28".into();
    mnist.batch_size = 8;
    bench_config(c, "mnist", mnist);

    let mut cifar = TrainConfig::preset("cifar10-hybrid").unwrap();
    cifar.data = "synthetic:3x32".into();
    cifar.batch_size = 2;
    bench_config(c, "cifar10_iddpm", cifar);

    let mut mlp = TrainConfig::preset("swissroll").unwrap();
    mlp.batch_size = 1024;
    bench_config(c, "mlp", mlp);
}

criterion_group!(benches, bench_training);
criterion_main!(benches);
