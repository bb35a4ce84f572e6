//! The op layer: every fused path equals its composite fallback.

use burn::nn::GroupNormConfig;
use burn::tensor::{Device, Distribution, Tensor};
use diffusion_models::ops::{fused_norm_available, norm_scale_shift_silu, norm_scale_shift_silu_composite};

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// On the plain CPU device (where the `cpu-kernels` feature fuses the op, as in every workspace
/// build: the `diffusion` binary turns it on) and on the autodiff device (always composite), for
/// every combination of scale-shift and SiLU, with non-trivial affine parameters.
#[test]
fn fused_norm_scale_shift_silu_equals_the_composite() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        let (b, c, h, w) = (3, 8, 5, 6);
        let mut norm = GroupNormConfig::new(4, c).with_epsilon(1e-5).init(&device);
        let gamma = Tensor::<1>::random([c], Distribution::Uniform(0.5, 1.5), &device);
        let beta = Tensor::<1>::random([c], Distribution::Uniform(-0.5, 0.5), &device);
        norm.gamma = norm.gamma.map(|p| p.map(|_| gamma.clone()));
        norm.beta = norm.beta.map(|p| p.map(|_| beta.clone()));
        // Data with an offset and a scale, so the statistics matter.
        let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(3.0, 2.0), &device);
        // The fused kernel serves exactly the plain CPU device, when compiled in.
        assert_eq!(fused_norm_available(&x), cfg!(feature = "cpu-kernels") && !device.is_autodiff());
        let scale = Tensor::<4>::random([b, c, 1, 1], Distribution::Normal(0.0, 0.5), &device);
        let shift = Tensor::<4>::random([b, c, 1, 1], Distribution::Normal(0.0, 0.5), &device);
        for ss in [false, true] {
            for act in [false, true] {
                let pair = ss.then(|| (scale.clone(), shift.clone()));
                let fused = norm_scale_shift_silu(&norm, x.clone(), pair.clone(), act);
                let composite = norm_scale_shift_silu_composite(&norm, x.clone(), pair, act);
                assert_eq!(fused.dims(), [b, c, h, w]);
                let d = max_diff(fused, composite);
                assert!(d < 1e-5, "{device:?} scale-shift {ss} silu {act}: max difference {d}");
            }
        }
    }
}
