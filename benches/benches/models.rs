//! diffusion-models on the CPU (flex) backend: UNet forward and forward + backward at 32×32 for
//! the `tiny` preset (batch 8) and `cifar10_iddpm` (batch 2), and the 2-D MLP at batch 1024.
//!
//! `cargo xtask bench models` (or `cargo bench -p diffusion-benches --bench models`).

/// The same allocator as the `diffusion` binary.
#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

use std::hint::black_box;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use diffusion_models::{MlpConfig, UNetConfig};

fn bench_unet(c: &mut Criterion, name: &str, config: UNetConfig, batch: usize) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let s = config.image_size;
    let mut group = c.benchmark_group(format!("unet {name} batch {batch} {s}x{s}"));
    group.sample_size(10);
    let unet = config.init(&device);
    let x = Tensor::<4>::random([batch, config.in_channels, s, s], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::random([batch], Distribution::Uniform(0.0, 1000.0), &device);
    group.bench_function("forward", |b| {
        b.iter(|| black_box(unet.forward(x.clone(), t.clone(), None).into_data()))
    });
    let unet_ad = config.init(&ad);
    let x_ad = Tensor::<4>::random([batch, config.in_channels, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let t_ad = Tensor::<1>::random([batch], Distribution::Uniform(0.0, 1000.0), &ad);
    group.bench_function("forward+backward", |b| {
        b.iter(|| {
            let loss = unet_ad.forward(x_ad.clone(), t_ad.clone(), None).square().mean();
            black_box(loss.backward())
        })
    });
    group.finish();
}

fn bench_models(c: &mut Criterion) {
    diffusion_alloc::keep_freed_memory();
    bench_unet(c, "tiny", UNetConfig::tiny(), 8);
    bench_unet(c, "cifar10_iddpm", UNetConfig::cifar10_iddpm(), 2);

    let ad = Device::flex().autodiff();
    let mlp = MlpConfig::new().init(&ad);
    let x = Tensor::<2>::random([1024, 2], Distribution::Normal(0.0, 1.0), &ad);
    let t = Tensor::<1>::random([1024], Distribution::Uniform(0.0, 1000.0), &ad);
    let mut group = c.benchmark_group("mlp batch 1024");
    group.bench_function("forward+backward", |b| {
        b.iter(|| black_box(mlp.forward(x.clone(), t.clone()).square().mean().backward()))
    });
    group.finish();
}

criterion_group!(benches, bench_models);
criterion_main!(benches);
