//! The op layer: every fused path equals its composite fallback.

use burn::nn::conv::{Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{DropoutConfig, GroupNormConfig, Initializer, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor};
use diffusion_models::ops::{
    Kernel, conv_kernel_available, conv1d, conv2d, dropout, fused_norm_available, kernel_runs,
    linear_add_silu, mlp, mlp_composite, norm_scale_shift_silu, norm_scale_shift_silu_composite,
    qkv_attention, qkv_attention_composite, silu,
};
use diffusion_models::{AttentionOrder, MlpConfig};

/// Runs `f` and asserts that it took `kernel`'s fused path (not the composite fallback): an
/// equality test of a kernel against the composite proves nothing if the kernel declined.
fn through_kernel<T>(kernel: Kernel, f: impl FnOnce() -> T) -> T {
    let before = kernel_runs(kernel);
    let y = f();
    assert!(
        kernel_runs(kernel) > before,
        "{kernel:?}: the fused kernel did not run (the composite path was taken)"
    );
    y
}

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
                let fused = through_kernel(Kernel::NormScaleShiftSilu, || {
                    norm_scale_shift_silu(&norm, x.clone(), pair.clone(), act)
                });
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
                    through_kernel(Kernel::NormScaleShiftSilu, || {
                        norm_scale_shift_silu(&norm, x.clone(), pair, act)
                    })
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

fn flat<const D: usize>(t: Option<Tensor<D>>) -> Vec<f32> {
    t.map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()).unwrap_or_default()
}

/// `max |a − b| ≤ 1e-5 · max(1, max |b|)`, with a message naming what differs.
fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ (a gradient is missing?)");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d <= 1e-5 * scale, "{what}: max difference {d} (scale {scale})");
}

/// Deterministic, non-trivial values.
fn wave(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * k).sin() * 0.8 + 0.1).collect()
}

/// Our convolution against burn's `Conv2d::forward` (the composite): the output, and on the
/// autodiff device the gradients of the input, the weight and the bias, for the geometries the
/// networks use (3×3 with padding 1, stride 1 and 2; 1×1) and for the kernel's edge cases:
/// asymmetric padding, no padding, no bias, odd sizes, a batch split into chunks of several
/// samples (small images) with a remainder, and a single sample.
#[test]
fn conv2d_kernel_equals_burn_conv_with_every_gradient() {
    // (batch, c_in, c_out, h, w, kernel, stride, padding (top, left, bottom, right), bias)
    type Case = (usize, usize, usize, usize, usize, usize, usize, (usize, usize, usize, usize), bool);
    let cases: &[Case] = &[
        (3, 4, 6, 8, 8, 3, 1, (1, 1, 1, 1), true),
        (2, 5, 3, 9, 7, 3, 2, (1, 1, 1, 1), true),
        (4, 6, 5, 6, 6, 1, 1, (0, 0, 0, 0), true),
        (2, 3, 4, 7, 5, 3, 1, (0, 0, 0, 0), false),
        (2, 3, 4, 6, 7, 3, 1, (2, 0, 1, 1), true),
        (5, 4, 7, 2, 2, 3, 1, (1, 1, 1, 1), true),
        (7, 3, 2, 3, 3, 1, 1, (0, 0, 0, 0), false),
        (1, 4, 4, 5, 5, 5, 2, (2, 2, 2, 2), true),
        // More output channels than one block of the weight gradient's transpose (16 rows).
        (2, 20, 37, 4, 4, 3, 1, (1, 1, 1, 1), true),
        // 3×3, stride 1, padding 1 at the sizes where the Winograd F(2×2, 3×3) path serves
        // (rows of ≥ 8 tiles with ≥ 32 channels): forward, input and
        // weight gradients, with an odd height and width and a chunk remainder.
        (3, 32, 33, 6, 32, 3, 1, (1, 1, 1, 1), true),
        (3, 33, 32, 5, 31, 3, 1, (1, 1, 1, 1), false),
        (3, 128, 130, 3, 16, 3, 1, (1, 1, 1, 1), true),
        (3, 40, 36, 7, 16, 3, 1, (1, 1, 1, 1), true),
    ];
    for &(b, ci, co, h, w, k, s, (t, l, bo, r), bias) in cases {
        let case = format!("B{b} {ci}→{co} {h}×{w} k{k} s{s} pad ({t},{l},{bo},{r}) bias {bias}");
        for device in [Device::flex(), Device::flex().autodiff()] {
            let grad = device.is_autodiff();
            let run = |ours: bool| {
                let mut conv: Conv2d = Conv2dConfig::new([ci, co], [k, k])
                    .with_stride([s, s])
                    .with_padding(PaddingConfig2d::Explicit(t, l, bo, r))
                    .with_bias(bias)
                    .with_initializer(Initializer::Zeros)
                    .init(&device);
                let weight = Tensor::<1>::from_floats(wave(co * ci * k * k, 0.71).as_slice(), &device)
                    .reshape([co, ci, k, k]);
                conv.weight =
                    conv.weight.map(|_| if grad { weight.clone().require_grad() } else { weight.clone() });
                let bv = Tensor::<1>::from_floats(wave(co, 1.3).as_slice(), &device);
                conv.bias =
                    conv.bias.map(|p| p.map(|_| if grad { bv.clone().require_grad() } else { bv.clone() }));
                let x = Tensor::<1>::from_floats(wave(b * ci * h * w, 0.37).as_slice(), &device)
                    .reshape([b, ci, h, w]);
                let x = if grad { x.require_grad() } else { x };
                assert_eq!(conv_kernel_available(&conv, &x), cfg!(feature = "cpu-kernels"));
                let y = if ours {
                    through_kernel(Kernel::Conv, || conv2d(&conv, x.clone()))
                } else {
                    conv.forward(x.clone())
                };
                let mut out = vec![flat(Some(y.clone()))];
                if grad {
                    let [_, _, oh, ow] = y.dims();
                    let weights = Tensor::<1>::from_floats(wave(b * co * oh * ow, 0.13).as_slice(), &device)
                        .reshape([b, co, oh, ow]);
                    let grads = (y * weights).sum().backward();
                    out.push(flat(x.grad(&grads)));
                    out.push(flat(conv.weight.val().grad(&grads)));
                    out.push(flat(conv.bias.as_ref().and_then(|p| p.val().grad(&grads))));
                }
                out
            };
            let (ours, burn) = (run(true), run(false));
            for (k, name) in ["output", "dx", "dweight", "dbias"].iter().enumerate().take(ours.len()) {
                assert_close(&ours[k], &burn[k], &format!("{case} {device:?} {name}"));
            }
        }
    }
}

/// The pointwise 1-D convolution (attention's projections) runs as a 1×1 2-D convolution and
/// equals burn's `Conv1d::forward`, with its gradients.
#[test]
fn pointwise_conv1d_equals_burn_conv1d() {
    let device = Device::flex().autodiff();
    let (b, ci, co, l) = (3, 8, 24, 20);
    let run = |ours: bool| {
        let mut conv = Conv1dConfig::new(ci, co, 1).init(&device);
        let weight = Tensor::<1>::from_floats(wave(co * ci, 0.53).as_slice(), &device).reshape([co, ci, 1]);
        conv.weight = conv.weight.map(|_| weight.clone().require_grad());
        let bias = Tensor::<1>::from_floats(wave(co, 0.77).as_slice(), &device);
        conv.bias = conv.bias.map(|p| p.map(|_| bias.clone().require_grad()));
        let x = Tensor::<1>::from_floats(wave(b * ci * l, 0.29).as_slice(), &device)
            .reshape([b, ci, l])
            .require_grad();
        let y = if ours {
            through_kernel(Kernel::Conv, || conv1d(&conv, x.clone()))
        } else {
            conv.forward(x.clone())
        };
        let weights =
            Tensor::<1>::from_floats(wave(b * co * l, 0.11).as_slice(), &device).reshape([b, co, l]);
        let grads = (y.clone() * weights).sum().backward();
        vec![
            flat(Some(y)),
            flat(x.grad(&grads)),
            flat(conv.weight.val().grad(&grads)),
            flat(conv.bias.as_ref().and_then(|p| p.val().grad(&grads))),
        ]
    };
    let (ours, burn) = (run(true), run(false));
    for (k, name) in ["output", "dx", "dweight", "dbias"].iter().enumerate() {
        assert_close(&ours[k], &burn[k], &format!("conv1d {name}"));
    }
}

/// The attention op against the composite (chunk, matmul, softmax, matmul), in both head
/// orders, with one and several heads, on the plain device (output) and the autodiff device
/// (output and the gradient of the packed qkv), with large logits so that the softmax's max
/// subtraction matters.
#[test]
fn fused_attention_equals_the_composite_in_both_head_orders() {
    for order in [AttentionOrder::Legacy, AttentionOrder::New] {
        for (b, heads, ch, len) in [(2, 1, 4, 9), (3, 4, 8, 16), (1, 2, 16, 5)] {
            let case = format!("{order:?} B{b} heads {heads} ch {ch} L{len}");
            for device in [Device::flex(), Device::flex().autodiff()] {
                let grad = device.is_autodiff();
                let run = |ours: bool| {
                    let w = 3 * heads * ch;
                    let qkv = Tensor::<1>::from_floats(wave(b * w * len, 0.61).as_slice(), &device)
                        .mul_scalar(4.0)
                        .reshape([b, w, len]);
                    let qkv = if grad { qkv.require_grad() } else { qkv };
                    let a = if ours {
                        through_kernel(Kernel::Attention, || qkv_attention(qkv.clone(), heads, order))
                    } else {
                        qkv_attention_composite(qkv.clone(), heads, order)
                    };
                    assert_eq!(a.dims(), [b, heads * ch, len]);
                    let mut out = vec![flat(Some(a.clone()))];
                    if grad {
                        let weights =
                            Tensor::<1>::from_floats(wave(b * heads * ch * len, 0.23).as_slice(), &device)
                                .reshape([b, heads * ch, len]);
                        let grads = (a * weights).sum().backward();
                        out.push(flat(qkv.grad(&grads)));
                    }
                    out
                };
                let (ours, burn) = (run(true), run(false));
                for (k, name) in ["output", "dqkv"].iter().enumerate().take(ours.len()) {
                    assert_close(&ours[k], &burn[k], &format!("{case} {device:?} {name}"));
                }
            }
        }
    }
}

/// SiLU against burn's, on the plain device and with its gradient on the autodiff device, over
/// a range that reaches the exp clamps (|x| up to 120), for a size split across threads.
#[test]
fn silu_kernel_equals_burn_silu() {
    for n in [7usize, 70_001] {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let grad = device.is_autodiff();
            let run = |ours: bool| {
                let x = Tensor::<1>::from_floats(wave(n, 0.37).as_slice(), &device)
                    .mul_scalar(150.0)
                    .reshape([n, 1]);
                let x = if grad { x.require_grad() } else { x };
                let y = if ours {
                    through_kernel(Kernel::Silu, || silu(x.clone()))
                } else {
                    burn::tensor::activation::silu(x.clone())
                };
                let mut out = vec![flat(Some(y.clone()))];
                if grad {
                    let w = Tensor::<1>::from_floats(wave(n, 0.11).as_slice(), &device).reshape([n, 1]);
                    let grads = (y * w).sum().backward();
                    out.push(flat(x.grad(&grads)));
                }
                out
            };
            let (ours, burn) = (run(true), run(false));
            for (k, name) in ["output", "dx"].iter().enumerate().take(ours.len()) {
                assert_close(&ours[k], &burn[k], &format!("silu n {n} {device:?} {name}"));
            }
        }
    }
}

/// Our dropout draws a different random stream from burn's, so it is checked against the
/// definition instead: on the autodiff device every output is 0 or x/(1 − p), the dropped
/// fraction is p within 4 standard errors, the gradient is the same mask times dy, a re-seeded
/// device reproduces the mask, a different seed changes it; outside training (plain device,
/// p = 0) it is the identity.
#[test]
fn dropout_kernel_follows_the_definition() {
    let device = Device::flex().autodiff();
    let (n, p) = (200_003usize, 0.3f64);
    let module = DropoutConfig::new(p).init();
    let vals = wave(n, 0.37).iter().map(|v| v + 2.0).collect::<Vec<f32>>(); // all ≥ 1.1: never 0
    let run = |seed: u64| {
        device.seed(seed);
        let x = Tensor::<1>::from_floats(vals.as_slice(), &device).require_grad();
        let y = through_kernel(Kernel::Dropout, || dropout(&module, x.clone()));
        let w = Tensor::<1>::from_floats(wave(n, 0.11).as_slice(), &device);
        let grads = (y.clone() * w).sum().backward();
        (flat(Some(y)), flat(x.grad(&grads)))
    };
    let (y, dx) = run(7);
    let w = wave(n, 0.11);
    let keep = (1.0 - p) as f32;
    let mut dropped = 0usize;
    for i in 0..n {
        if y[i] == 0.0 {
            dropped += 1;
            assert_eq!(dx[i], 0.0, "a dropped element passes no gradient");
        } else {
            assert!((y[i] - vals[i] / keep).abs() <= 1e-6 * y[i].abs(), "kept elements are scaled by 1/keep");
            assert!(
                (dx[i] - w[i] / keep).abs() <= 1e-6 * (w[i] / keep).abs().max(1.0),
                "gradient of a kept element"
            );
        }
    }
    let frac = dropped as f64 / n as f64;
    let se = (p * (1.0 - p) / n as f64).sqrt();
    assert!((frac - p).abs() < 4.0 * se, "dropped fraction {frac}, expected {p} ± {}", 4.0 * se);
    assert_eq!(run(7).0, y, "the same device seed gives the same mask");
    assert_ne!(run(8).0, y, "another seed gives another mask");
    // Identity where dropout does not apply.
    let plain = Tensor::<1>::from_floats(vals.as_slice(), &Device::flex());
    assert_eq!(flat(Some(dropout(&module, plain))), vals);
    let x = Tensor::<1>::from_floats(vals.as_slice(), &device);
    assert_eq!(flat(Some(dropout(&DropoutConfig::new(0.0).init(), x))), vals);
}

/// `SiLU(h·W + b + a)` against burn's Linear, add and SiLU: the output on both devices and the
/// gradients of h, W, b and a on the autodiff device, with and without a bias, at a size the
/// GEMMs split across threads and at a small one.
#[test]
fn linear_add_silu_equals_the_composite() {
    for (rows, d_in, d_out) in [(5, 3, 7), (300, 64, 48)] {
        for bias in [true, false] {
            for device in [Device::flex(), Device::flex().autodiff()] {
                let grad = device.is_autodiff();
                let run = |ours: bool| {
                    let mut lin = LinearConfig::new(d_in, d_out).with_bias(bias).init(&device);
                    let w = Tensor::<1>::from_floats(wave(d_in * d_out, 0.71).as_slice(), &device)
                        .reshape([d_in, d_out]);
                    lin.weight = lin.weight.map(|_| if grad { w.clone().require_grad() } else { w.clone() });
                    let b = Tensor::<1>::from_floats(wave(d_out, 1.3).as_slice(), &device);
                    lin.bias =
                        lin.bias.map(|p| p.map(|_| if grad { b.clone().require_grad() } else { b.clone() }));
                    let h = Tensor::<1>::from_floats(wave(rows * d_in, 0.37).as_slice(), &device)
                        .reshape([rows, d_in]);
                    let a = Tensor::<1>::from_floats(wave(rows * d_out, 0.53).as_slice(), &device)
                        .reshape([rows, d_out]);
                    let (h, a) = if grad { (h.require_grad(), a.require_grad()) } else { (h, a) };
                    let y = if ours {
                        through_kernel(Kernel::LinearAddSilu, || linear_add_silu(&lin, h.clone(), a.clone()))
                    } else {
                        burn::tensor::activation::silu(lin.forward(h.clone()) + a.clone())
                    };
                    let mut out = vec![flat(Some(y.clone()))];
                    if grad {
                        let wt = Tensor::<1>::from_floats(wave(rows * d_out, 0.13).as_slice(), &device)
                            .reshape([rows, d_out]);
                        let grads = (y * wt).sum().backward();
                        out.push(flat(h.grad(&grads)));
                        out.push(flat(lin.weight.val().grad(&grads)));
                        out.push(flat(lin.bias.as_ref().and_then(|p| p.val().grad(&grads))));
                        out.push(flat(a.grad(&grads)));
                    }
                    out
                };
                let (ours, burn) = (run(true), run(false));
                for (k, name) in ["output", "dh", "dW", "db", "da"].iter().enumerate().take(ours.len()) {
                    assert_close(
                        &ours[k],
                        &burn[k],
                        &format!("{rows}×{d_in}→{d_out} bias {bias} {device:?} {name}"),
                    );
                }
            }
        }
    }
}

/// The whole-MLP op against the MLP built from one op per layer (burn's Linear, the embedding
/// with burn's sin/cos, our SiLU ops): the output on both CPU devices, and on the autodiff device
/// the gradient of x and of every parameter (each layer's weight and bias, through θ's `cat`).
/// Cases: an odd embedding width (zero column) and one layer with a batch smaller than a row
/// block; three layers with a batch of 300 (blocks of 128 with a remainder); the swissroll
/// preset's size (hidden 256, batch 1000); timesteps up to 3999 with fractional parts (the
/// sin/cos range reduction).
#[test]
fn mlp_op_equals_the_layer_by_layer_mlp() {
    for (batch, data, hidden, layers, time_dim, out) in
        [(5, 2, 16, 1, 7, 2), (300, 3, 48, 3, 32, 6), (1000, 2, 256, 3, 64, 2)]
    {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let grad = device.is_autodiff();
            let net = MlpConfig::new()
                .with_data_dim(data)
                .with_out_dim(out)
                .with_hidden(hidden)
                .with_layers(layers)
                .with_time_dim(time_dim)
                .init(&device);
            let t: Vec<f32> =
                (0..batch).map(|i| ((i * 877) % 4000) as f32 + if i % 3 == 0 { 0.25 } else { 0.0 }).collect();
            let run = |ours: bool| {
                let x = Tensor::<1>::from_floats(wave(batch * data, 0.37).as_slice(), &device)
                    .reshape([batch, data]);
                let x = if grad { x.require_grad() } else { x };
                let ts = Tensor::<1>::from_floats(t.as_slice(), &device);
                let y = if ours {
                    through_kernel(Kernel::Mlp, || mlp(&net, x.clone(), ts))
                } else {
                    mlp_composite(&net, x.clone(), ts)
                };
                let mut res = vec![("output".to_string(), flat(Some(y.clone())))];
                if grad {
                    let wt = Tensor::<1>::from_floats(wave(batch * out, 0.13).as_slice(), &device)
                        .reshape([batch, out]);
                    let grads = (y * wt).sum().backward();
                    res.push(("dx".into(), flat(x.grad(&grads))));
                    let lins = std::iter::once(&net.time_proj)
                        .chain([&net.input])
                        .chain(&net.hidden)
                        .chain([&net.output]);
                    for (i, l) in lins.enumerate() {
                        res.push((format!("dW{i}"), flat(l.weight.val().grad(&grads))));
                        res.push((
                            format!("db{i}"),
                            flat(l.bias.as_ref().and_then(|b| b.val().grad(&grads))),
                        ));
                    }
                }
                res
            };
            let (ours, reference) = (run(true), run(false));
            assert_eq!(ours.len(), if grad { 2 + 2 * (layers + 2) } else { 1 });
            for ((name, a), (_, b)) in ours.iter().zip(&reference) {
                assert!(!b.is_empty(), "{name}: the reference has no gradient");
                assert_close(a, b, &format!("batch {batch} layers {layers} {device:?} {name}"));
            }
        }
    }
}
