//! diffusion-core hot paths on the CPU (flex) backend: the forward process and the training
//! losses on a CIFAR-sized batch (64 × 3 × 32 × 32), with a stand-in network (the identity on the
//! mean channels) so that only the diffusion maths is timed.
//!
//! `cargo xtask bench core` (or `cargo bench -p diffusion-benches --bench core`).

/// The same allocator as the `diffusion` binary.
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

use burn::tensor::{Device, Distribution, Int, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, LossKind, ModelVariance};
use std::hint::black_box;

fn bench_core(c: &mut Criterion) {
    diffusion_alloc::keep_freed_memory();
    let device = Device::flex();
    let shape = [64, 3, 32, 32];
    let x0 = Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
    let noise = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1, Int>::random([64], Distribution::Uniform(0.0, 1000.0), &device);
    let sync = |x: Tensor<1>| black_box(x.into_data());

    let simple = GaussianDiffusion::from_schedule(
        &BetaSchedule::Linear { num_timesteps: 1000 },
        DiffusionConfig::default(),
    )
    .expect("linear schedule");
    let mut group = c.benchmark_group("diffusion-core 64x3x32x32");
    group.sample_size(20);
    group.bench_function("q_sample", |b| {
        b.iter(|| {
            let x_t = simple.q_sample(x0.clone(), t.clone(), noise.clone());
            black_box(x_t.into_data())
        })
    });
    group.bench_function("training_losses L_simple", |b| {
        b.iter(|| sync(simple.training_losses(x0.clone(), t.clone(), noise.clone(), |x_t, _| x_t).loss))
    });
    let hybrid = simple
        .clone()
        .with_config(DiffusionConfig {
            variance: ModelVariance::LearnedRange,
            loss: LossKind::RescaledMse,
            ..DiffusionConfig::default()
        })
        .expect("the hybrid process");
    group.bench_function("training_losses L_hybrid", |b| {
        b.iter(|| {
            let l = hybrid.training_losses(x0.clone(), t.clone(), noise.clone(), |x_t, _| {
                Tensor::cat(vec![x_t.clone(), x_t.tanh()], 1)
            });
            sync(l.loss)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_core);
criterion_main!(benches);
