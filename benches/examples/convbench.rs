//! Times our 3×3 convolution alone (forward, and forward + backward on the autodiff device)
//! on ADM-like shapes: `convbench [reps] [label filter]`. `DIFFUSION_NO_WINOGRAD=1` selects the im2col path.

use std::time::Instant;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tensor};

#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

fn main() {
    diffusion_alloc::keep_freed_memory();
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    // An optional second argument keeps only the shapes whose label contains it ("4x4", "B32").
    let only = std::env::args().nth(2).unwrap_or_default();
    for (b, ci, co, s) in [
        (8, 128, 128, 32),
        (8, 256, 256, 16),
        (8, 256, 256, 8),
        (8, 256, 256, 4),
        (8, 512, 256, 4),
        (8, 384, 128, 32),
        (32, 32, 32, 32),
        (32, 64, 64, 16),
    ] {
        if !format!("B{b} {ci}->{co} {s}x{s}").contains(&only) {
            continue;
        }
        let device = Device::flex().autodiff();
        let conv = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        // The forward pass alone on the plain device (as sampling runs it).
        let plain = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&Device::flex());
        let x = Tensor::<4>::random([b, ci, s, s], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let flops = 2.0 * (b * ci * co * s * s * 9) as f64;
        let mut fwd = vec![];
        let mut both = vec![];
        for _ in 0..reps {
            let t = Instant::now();
            let y = diffusion_models::ops::conv2d(&plain, x.clone().inner());
            let _ = y.into_data();
            fwd.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let y = diffusion_models::ops::conv2d(&conv, x.clone());
            let g = y.sum().backward();
            let _ = x.grad(&g).map(|g| g.into_data());
            both.push(t.elapsed().as_secs_f64());
        }
        fwd.sort_by(f64::total_cmp);
        both.sort_by(f64::total_cmp);
        let (f, a) = (fwd[0], both[0]); // the minimum: the least disturbed run
        println!(
            "B{b} {ci}->{co} {s}x{s}: forward {:.2} ms ({:.0} GF/s direct-equivalent), fwd+bwd {:.2} ms ({:.0} GF/s)",
            f * 1e3,
            flops / f / 1e9,
            a * 1e3,
            3.0 * flops / a / 1e9
        );
    }
}
