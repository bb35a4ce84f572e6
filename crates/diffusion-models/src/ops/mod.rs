//! The op layer: operations the networks call through one function each, with a fused kernel
//! where we have one and burn's composite ops everywhere else.
//!
//! | op | fused on | elsewhere |
//! |---|---|---|
//! | [`norm_scale_shift_silu`]: SiLU(GroupNorm(x) · (1 + scale) + shift) | the CPU backend (`flex`), plain (sampling, evaluation) and autodiff (training: one graph node with its own backward), with the `cpu-kernels` feature | composite: GroupNorm, mul, add, SiLU (other devices, gradient checkpointing) |
//! | [`dropout`]: inverted dropout | the autodiff CPU device (mask from a counter-based hash keyed by the device's seeded generator, one pass, kept for the backward) — a different random stream from burn's, equally distributed and as reproducible | burn's `Dropout::forward` |
//! | [`linear_add_silu`]: SiLU(h·W + b + a) (the MLP's layers) | the CPU backend, plain and autodiff (one GEMM + one pass; one node with its own backward) | Linear, add, SiLU |
//! | [`mlp`]: the whole 2-D MLP denoiser (embedding, every layer) | the CPU backend, plain and autodiff (row blocks of the batch through the whole network, one parallel dispatch; one node over x and the concatenated parameters, with its own backward) | the layers' ops one by one |
//! | [`silu`]: x·σ(x) | the CPU backend, plain and autodiff (vectorised exp; one node with its own backward) | burn's `silu` |
//! | [`qkv_attention`]: ADM's attention over a packed qkv (both head orders), never materialising the `[B·H, L, L]` scores | the CPU backend, plain and autodiff (backward recomputes the softmax from saved row log-sum-exps) | composite: chunk, matmul, softmax, matmul |
//! | [`conv2d`] (and [`conv1d`] for the 1×1 projections of attention): GEMMs over per-thread im2col tiles in NCHW, with a GEMM-shaped weight gradient | the CPU backend, plain and autodiff, with the `cpu-kernels` feature; explicit or no zero padding, one group, dilation 1 | burn's `Conv2d::forward` / `Conv1d::forward` |
//!
//! A kernel for another device (a cubecl kernel for wgpu/CUDA) or with its own backward (for
//! training) is added here, behind the same function, without touching the model code. Every
//! fused path is tested for equality with its composite fallback (`tests/it/ops.rs`).

use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{Dropout, GroupNorm, Linear};
#[cfg(feature = "cpu-kernels")]
use burn::nn::{PaddingConfig1d, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use crate::blocks::AttentionOrder;

/// The fused kernels of this layer, for [`kernel_runs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`norm_scale_shift_silu`].
    NormScaleShiftSilu,
    /// [`conv2d`] and the pointwise [`conv1d`].
    Conv,
    /// [`qkv_attention`].
    Attention,
    /// [`silu`].
    Silu,
    /// [`dropout`].
    Dropout,
    /// [`linear_add_silu`].
    LinearAddSilu,
    /// [`mlp`].
    Mlp,
}

const KERNELS: usize = 7;

thread_local! {
    static RUNS: [std::cell::Cell<u64>; KERNELS] = const { [const { std::cell::Cell::new(0) }; KERNELS] };
    static KERNELS_ON: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// How many times the calling thread has taken `kernel`'s fused path (rather than the composite
/// ops) since it started: a diagnostic that tells a test, a benchmark or a user whether the fast
/// path runs on their device. Counted on the thread that calls the op (the kernels' own worker
/// threads do not count), so concurrent tests do not see each other's calls.
pub fn kernel_runs(kernel: Kernel) -> u64 {
    RUNS.with(|r| r[kernel as usize].get())
}

/// Turns this layer's fused kernels on or off for the calling thread (they are on by default);
/// returns the previous setting. With them off, every op runs burn's composite ops, as on a
/// device without kernels: the reference path that the kernels are tested against, and what a
/// backend-parity test compares another device with. A network's forward pass decides per op, on
/// the thread that calls it, so the setting covers the backward pass of the graph it builds.
pub fn set_kernels_enabled(enabled: bool) -> bool {
    KERNELS_ON.with(|k| k.replace(enabled))
}

/// Whether this layer's fused kernels are on for the calling thread (see [`set_kernels_enabled`]);
/// also false in a build without the `cpu-kernels` feature.
pub fn kernels_enabled() -> bool {
    cfg!(feature = "cpu-kernels") && KERNELS_ON.with(|k| k.get())
}

/// Runs `f` with this layer's fused kernels off on the calling thread (see
/// [`set_kernels_enabled`]), restoring the previous setting afterwards, even on a panic.
pub fn with_composite_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_kernels_enabled(self.0);
        }
    }
    let _restore = Restore(set_kernels_enabled(false));
    f()
}

#[cfg(feature = "cpu-kernels")]
fn ran<T>(kernel: Kernel, y: T) -> T {
    RUNS.with(|r| r[kernel as usize].set(r[kernel as usize].get() + 1));
    y
}

/// `SiLU(GroupNorm(x) · (1 + scale) + shift)`, or without the scale-shift (`None`), or without
/// the SiLU (`apply_silu = false`).
///
/// # Shapes
/// `x: [B, C, H, W]`; `scale`, `shift`: `[B, C, 1, 1]`.
pub fn norm_scale_shift_silu(
    norm: &GroupNorm,
    x: Tensor<4>,
    scale_shift: Option<(Tensor<4>, Tensor<4>)>,
    apply_silu: bool,
) -> Tensor<4> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled()
        && let Some(y) = cpu::fused(norm, &x, scale_shift.as_ref(), apply_silu)
    {
        return ran(Kernel::NormScaleShiftSilu, y);
    }
    norm_scale_shift_silu_composite(norm, x, scale_shift, apply_silu)
}

/// Whether [`norm_scale_shift_silu`] runs its fused kernel for `x`: a CPU tensor, plain or on
/// the autodiff device without gradient checkpointing, in a build with the `cpu-kernels` feature.
pub fn fused_norm_available(x: &Tensor<4>) -> bool {
    #[cfg(feature = "cpu-kernels")]
    {
        kernels_enabled() && (cpu::is_plain(x) || cpu::is_autodiff(x))
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = x;
        false
    }
}

/// [`norm_scale_shift_silu`] with burn's composite ops (any device, autodiff included).
pub fn norm_scale_shift_silu_composite(
    norm: &GroupNorm,
    x: Tensor<4>,
    scale_shift: Option<(Tensor<4>, Tensor<4>)>,
    apply_silu: bool,
) -> Tensor<4> {
    let h = norm.forward(x);
    let h = match scale_shift {
        Some((scale, shift)) => h * scale.add_scalar(1.0) + shift,
        None => h,
    };
    if apply_silu { burn::tensor::activation::silu(h) } else { h }
}

/// A 2-D convolution by the module `conv`.
///
/// # Shapes
/// `[B, C_in, H, W] → [B, C_out, H_out, W_out]`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled()
        && let Some(y) = conv2d_kernel(conv, &x)
    {
        return ran(Kernel::Conv, y);
    }
    conv.forward(x)
}

/// Whether [`conv2d`] runs our kernel for `conv` on `x`.
pub fn conv_kernel_available(conv: &Conv2d, x: &Tensor<4>) -> bool {
    #[cfg(feature = "cpu-kernels")]
    {
        kernels_enabled() && conv2d_padding(conv).is_some() && (cpu::is_plain(x) || cpu::is_autodiff(x))
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = (conv, x);
        false
    }
}

/// The `(top, left, bottom, right)` zero padding of `conv` when our kernel covers it.
#[cfg(feature = "cpu-kernels")]
fn conv2d_padding(conv: &Conv2d) -> Option<(usize, usize, usize, usize)> {
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    match conv.padding {
        PaddingConfig2d::Valid => Some((0, 0, 0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some((top, left, bottom, right)),
        PaddingConfig2d::Same => None,
    }
}

#[cfg(feature = "cpu-kernels")]
fn conv2d_kernel(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let padding = conv2d_padding(conv)?;
    let bias = conv.bias.as_ref().map(|b| b.val());
    cpu::conv::conv2d(x, &conv.weight.val(), bias.as_ref(), conv.stride, padding)
}

/// A 1-D convolution by the module `conv`; a pointwise one (kernel 1, stride 1, no padding —
/// the projections of attention) runs as a 1×1 [`conv2d`].
///
/// # Shapes
/// `[B, C_in, L] → [B, C_out, L_out]`.
pub fn conv1d(conv: &Conv1d, x: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled()
        && conv.kernel_size == 1
        && conv.stride == 1
        && conv.dilation == 1
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig1d::Valid | PaddingConfig1d::Explicit(0, 0))
    {
        let [b, c, l] = x.dims();
        let weight = conv.weight.val();
        let [co, ci, _] = weight.dims();
        let bias = conv.bias.as_ref().map(|b| b.val());
        let x4 = x.clone().reshape([b, c, l, 1]);
        if let Some(y) =
            cpu::conv::conv2d(&x4, &weight.reshape([co, ci, 1, 1]), bias.as_ref(), [1, 1], (0, 0, 0, 0))
        {
            return ran(Kernel::Conv, y.reshape([b, co, l]));
        }
    }
    conv.forward(x)
}

/// Dropout by the module `dropout`: the identity outside training (a frozen module, a device
/// without autodiff, probability 0).
pub fn dropout<const D: usize>(dropout: &Dropout, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled()
        && dropout.training.is_enabled()
        && dropout.prob > 0.0
        && dropout.prob < 1.0
        && let Some(y) = cpu::act::dropout(&x, dropout.prob)
    {
        return ran(Kernel::Dropout, y);
    }
    dropout.forward(x)
}

/// `SiLU(linear(h) + a)`: a Linear layer, an added tensor and SiLU.
///
/// # Shapes
/// `h: [B, d_in]`, `a: [B, d_out]` → `[B, d_out]`.
pub fn linear_add_silu(linear: &Linear, h: Tensor<2>, a: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled() {
        let bias = linear.bias.as_ref().map(|b| b.val());
        if let Some(y) = cpu::linear::linear_add_silu(&h, &linear.weight.val(), bias.as_ref(), &a) {
            return ran(Kernel::LinearAddSilu, y);
        }
    }
    silu(linear.forward(h) + a)
}

/// The MLP denoiser's forward pass, `(x_t, t) → output` (see [`Mlp`](crate::Mlp)).
///
/// # Shapes
/// `x: [B, data_dim]`, `timesteps: [B]` → `[B, out_dim]`.
pub fn mlp(mlp: &crate::Mlp, x: Tensor<2>, timesteps: Tensor<1>) -> Tensor<2> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled() {
        let layers: Vec<(Tensor<2>, Tensor<1>)> = std::iter::once(&mlp.time_proj)
            .chain(std::iter::once(&mlp.input))
            .chain(&mlp.hidden)
            .chain(std::iter::once(&mlp.output))
            .filter_map(|l| Some((l.weight.val(), l.bias.as_ref()?.val())))
            .collect();
        if layers.len() == mlp.hidden.len() + 3
            && let Some(y) = cpu::mlp::mlp(&x, &timesteps, mlp.time_dim, &layers)
        {
            return ran(Kernel::Mlp, y);
        }
    }
    mlp_composite(mlp, x, timesteps)
}

/// [`mlp`] with one op per layer (any device, autodiff included).
pub fn mlp_composite(mlp: &crate::Mlp, x: Tensor<2>, timesteps: Tensor<1>) -> Tensor<2> {
    let emb = crate::embedding::timestep_embedding(timesteps, mlp.time_dim, crate::embedding::MAX_PERIOD);
    let temb = silu(mlp.time_proj.forward(emb));
    let mut h = linear_add_silu(&mlp.input, x, temb.clone());
    for layer in &mlp.hidden {
        h = linear_add_silu(layer, h, temb.clone());
    }
    mlp.output.forward(h)
}

/// SiLU, `x·σ(x)`, element-wise.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled()
        && let Some(y) = cpu::act::silu(&x)
    {
        return ran(Kernel::Silu, y);
    }
    burn::tensor::activation::silu(x)
}

/// Scaled dot-product attention over a packed `qkv` tensor, with ADM's scaling (q and k each by
/// `ch^{-1/4}`) and head split.
///
/// # Shapes
/// `qkv: [B, 3·H·ch, L]` → `[B, H·ch, L]`.
pub fn qkv_attention(qkv: Tensor<3>, num_heads: usize, order: AttentionOrder) -> Tensor<3> {
    #[cfg(feature = "cpu-kernels")]
    if kernels_enabled()
        && let Some(a) = cpu::attention::qkv_attention(&qkv, num_heads, order)
    {
        return ran(Kernel::Attention, a);
    }
    qkv_attention_composite(qkv, num_heads, order)
}

/// [`qkv_attention`] with burn's composite ops (any device, autodiff included).
///
/// # Shapes
/// `qkv: [B, 3·H·ch, L]` → `[B, H·ch, L]`.
pub fn qkv_attention_composite(qkv: Tensor<3>, num_heads: usize, order: AttentionOrder) -> Tensor<3> {
    let [b, width, len] = qkv.dims();
    assert!(
        width.is_multiple_of(3 * num_heads),
        "qkv width {width} is not divisible by 3 × {num_heads} heads"
    );
    let ch = width / (3 * num_heads);
    let (q, k, v) = match order {
        AttentionOrder::Legacy => {
            let mut parts = qkv.reshape([b * num_heads, 3 * ch, len]).chunk(3, 1);
            let v = parts.pop().expect("3 parts");
            let k = parts.pop().expect("3 parts");
            (parts.pop().expect("3 parts"), k, v)
        }
        AttentionOrder::New => {
            let mut parts = qkv.chunk(3, 1);
            let split = |x: Tensor<3>| x.reshape([b * num_heads, ch, len]);
            let v = split(parts.pop().expect("3 parts"));
            let k = split(parts.pop().expect("3 parts"));
            (split(parts.pop().expect("3 parts")), k, v)
        }
    };
    let scale = 1.0 / (ch as f64).sqrt().sqrt();
    // weight[b, t, s] = Σ_c q[b, c, t] k[b, c, s]
    let weight = q.mul_scalar(scale).swap_dims(1, 2).matmul(k.mul_scalar(scale));
    let weight = softmax(weight, 2);
    // a[b, c, t] = Σ_s weight[b, t, s] v[b, c, s]
    let a = v.matmul(weight.swap_dims(1, 2));
    a.reshape([b, num_heads * ch, len])
}

#[cfg(feature = "cpu-kernels")]
mod cpu;
