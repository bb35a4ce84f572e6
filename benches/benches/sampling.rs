//! Sampling throughput on the CPU (flex) backend: DDIM-50 (respaced from 1000 linear steps) with
//! the `tiny` (32×32×3) and `mnist` (28×28×1) UNets at batch 8, no autodiff. Images/s =
//! 8 / (time per iteration).
//!
//! `cargo xtask bench sampling` (or `cargo bench -p diffusion-benches --bench sampling`).

/// The same allocator as the `diffusion` binary.
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

use std::hint::black_box;

use burn::tensor::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_core::{BetaSchedule, DiffusionConfig, GaussianDiffusion, ModelVariance};
use diffusion_models::UNetConfig;
use diffusion_sample::{Method, NoiseSource, SampleOptions, sample};

fn bench_sampling(c: &mut Criterion) {
    diffusion_alloc::keep_freed_memory();
    let device = Device::flex();
    let config = DiffusionConfig { variance: ModelVariance::LearnedRange, ..Default::default() };
    let diffusion = GaussianDiffusion::from_schedule(&BetaSchedule::Linear { num_timesteps: 1000 }, config)
        .expect("linear schedule")
        .respace_spec("ddim50")
        .expect("ddim50");
    let mut group = c.benchmark_group("DDIM-50 batch 8");
    group.sample_size(10);
    for (name, cfg) in [("tiny", UNetConfig::tiny()), ("mnist", UNetConfig::mnist())] {
        let unet = cfg.init(&device);
        let model = |x: Tensor<4>, t: Tensor<1>| unet.forward(x, t, None);
        let ids: Vec<u64> = (0..8).collect();
        let item = [1, cfg.in_channels, cfg.image_size, cfg.image_size];
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = sample(
                    &diffusion,
                    &model,
                    &ids,
                    item,
                    &NoiseSource::new(0),
                    Method::Ddim { eta: 0.0 },
                    &SampleOptions::default(),
                    None,
                    &device,
                )
                .unwrap();
                black_box(out.sample.into_data())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sampling);
criterion_main!(benches);
