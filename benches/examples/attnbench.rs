//! Times `ops::qkv_attention` alone (forward + backward on the autodiff device) at the shapes of
//! `tiny-mnist` and `cifar10_iddpm`: `attnbench [reps]`. `DIFFUSION_NO_AVX2=1` runs the kernels'
//! baseline (SSE2) code.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use diffusion_models::AttentionOrder;

#[global_allocator]
static GLOBAL: diffusion_alloc::Allocator = diffusion_alloc::Allocator;

fn main() {
    diffusion_alloc::keep_freed_memory();
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(9);
    // (batch, channels, heads, tokens)
    for (b, c, heads, len) in [(32, 64, 4, 256), (8, 256, 4, 256), (8, 256, 4, 64)] {
        let device = Device::flex().autodiff();
        let qkv =
            Tensor::<3>::random([b, 3 * c, len], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let mut times = vec![];
        for _ in 0..reps {
            let t = Instant::now();
            let a = diffusion_models::ops::qkv_attention(qkv.clone(), heads, AttentionOrder::Legacy);
            let g = a.sum().backward();
            let _ = qkv.grad(&g).map(|g| g.into_data());
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "B{b} C{c} heads {heads} L{len}: forward + backward {:.2} ms (min of {reps})",
            times[0] * 1e3
        );
    }
}
