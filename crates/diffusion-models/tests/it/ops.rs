//! The op layer: every fused path equals its composite fallback.

use burn::nn::GroupNormConfig;
use burn::tensor::{Device, Distribution, Tensor};
use diffusion_models::ops::{fused_norm_available, norm_scale_shift_silu, norm_scale_shift_silu_composite};

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// On the plain and the autodiff CPU device (where the `cpu-kernels` feature fuses the op, as in
/// every workspace build: the `diffusion` binary turns it on), for
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
        // The fused kernel serves the CPU device, plain and autodiff, when compiled in.
        assert_eq!(fused_norm_available(&x), cfg!(feature = "cpu-kernels"));
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

/// On the autodiff CPU device the fused op is one graph node with its own backward: every
/// gradient (x, γ, β, scale, shift) equals the composite ops' within 1e-5 (relative to the
/// gradient's scale), with and without scale-shift and SiLU.
#[test]
fn fused_backward_equals_the_composite() {
    let device = Device::flex().autodiff();
    let (b, c, h, w) = (2, 8, 4, 5);
    for ss in [false, true] {
        for act in [false, true] {
            let run = |fused: bool| {
                let mut norm = GroupNormConfig::new(4, c).with_epsilon(1e-5).init(&device);
                let gamma = Tensor::<1>::from_floats([0.7, 1.3, 0.9, 1.1, 1.0, 0.5, 1.6, 0.8], &device);
                let beta = Tensor::<1>::from_floats([0.1, -0.2, 0.3, 0.0, -0.1, 0.2, 0.05, -0.3], &device);
                norm.gamma = norm.gamma.map(|p| p.map(|_| gamma.clone().require_grad()));
                norm.beta = norm.beta.map(|p| p.map(|_| beta.clone().require_grad()));
                let vals = |n: usize, k: f32| -> Vec<f32> {
                    (0..n).map(|i| ((i as f32 * k).sin() * 2.0) + 0.5).collect()
                };
                let x = Tensor::<1>::from_floats(vals(b * c * h * w, 0.37).as_slice(), &device)
                    .reshape([b, c, h, w])
                    .require_grad();
                let scale = Tensor::<1>::from_floats(vals(b * c, 0.91).as_slice(), &device)
                    .mul_scalar(0.3)
                    .reshape([b, c, 1, 1])
                    .require_grad();
                let shift = Tensor::<1>::from_floats(vals(b * c, 1.7).as_slice(), &device)
                    .mul_scalar(0.3)
                    .reshape([b, c, 1, 1])
                    .require_grad();
                let weights = Tensor::<1>::from_floats(vals(b * c * h * w, 0.13).as_slice(), &device)
                    .reshape([b, c, h, w]);
                let pair = ss.then(|| (scale.clone(), shift.clone()));
                let y = if fused {
                    norm_scale_shift_silu(&norm, x.clone(), pair, act)
                } else {
                    norm_scale_shift_silu_composite(&norm, x.clone(), pair, act)
                };
                assert_eq!(fused_norm_available(&x), cfg!(feature = "cpu-kernels"));
                let grads = (y.clone() * weights).sum().backward();
                let flat = |t: Option<Tensor<4>>| -> Vec<f32> {
                    t.map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()).unwrap_or_default()
                };
                let flat1 = |t: Option<Tensor<1>>| -> Vec<f32> {
                    t.map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()).unwrap_or_default()
                };
                let g = norm.gamma.as_ref().unwrap().val();
                let bt = norm.beta.as_ref().unwrap().val();
                vec![
                    flat(Some(y.inner())),
                    flat(x.grad(&grads)),
                    flat1(g.grad(&grads)),
                    flat1(bt.grad(&grads)),
                    flat(if ss { scale.grad(&grads) } else { None }),
                    flat(if ss { shift.grad(&grads) } else { None }),
                ]
            };
            let (fused, composite) = (run(true), run(false));
            for (k, name) in ["output", "dx", "dgamma", "dbeta", "dscale", "dshift"].iter().enumerate() {
                let (a, b) = (&fused[k], &composite[k]);
                assert_eq!(a.len(), b.len(), "{name}: a gradient is missing (scale-shift {ss}, silu {act})");
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let d = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    d <= 1e-5 * scale,
                    "{name} (scale-shift {ss}, silu {act}): max difference {d} (scale {scale})"
                );
            }
        }
    }
}
