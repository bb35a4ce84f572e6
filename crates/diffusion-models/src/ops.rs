//! The op layer: operations the networks call through one function each, with a fused kernel
//! where we have one and burn's composite ops everywhere else.
//!
//! | op | fused on | elsewhere |
//! |---|---|---|
//! | [`norm_scale_shift_silu`]: SiLU(GroupNorm(x) · (1 + scale) + shift) | the CPU backend (`flex`) without autodiff — sampling and evaluation — with the `cpu-kernels` feature | composite: GroupNorm, mul, add, SiLU |
//!
//! A kernel for another device (a cubecl kernel for wgpu/CUDA) or with its own backward (for
//! training) is added here, behind the same function, without touching the model code. Every
//! fused path is tested for equality with its composite fallback (`tests/it/ops.rs`).

use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

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
    if let Some(y) = cpu::fused(norm, &x, scale_shift.as_ref(), apply_silu) {
        return y;
    }
    norm_scale_shift_silu_composite(norm, x, scale_shift, apply_silu)
}

/// Whether [`norm_scale_shift_silu`] runs its fused kernel for `x` (a plain CPU tensor, in a build
/// with the `cpu-kernels` feature).
pub fn fused_norm_available(x: &Tensor<4>) -> bool {
    #[cfg(feature = "cpu-kernels")]
    {
        x.clone().try_into_primitive::<burn::backend::Flex>().is_ok()
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
    if apply_silu { silu(h) } else { h }
}

#[cfg(feature = "cpu-kernels")]
mod cpu {
    //! One pass per (sample, group) over contiguous memory: statistics in f64, then normalise,
    //! affine, scale-shift and SiLU while writing the output.

    use burn::nn::GroupNorm;
    use burn::tensor::{Tensor, TensorData};
    use rayon::prelude::*;

    fn host(t: Tensor<4>) -> Option<Vec<f32>> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().ok()
    }

    fn host1(t: Tensor<1>) -> Option<Vec<f32>> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().ok()
    }

    /// The fused result, or `None` when the tensor is not a plain (non-autodiff) CPU tensor.
    pub fn fused(
        norm: &GroupNorm,
        x: &Tensor<4>,
        scale_shift: Option<&(Tensor<4>, Tensor<4>)>,
        apply_silu: bool,
    ) -> Option<Tensor<4>> {
        // A cheap handle clone: the conversion fails on autodiff tensors and on other backends.
        if !super::fused_norm_available(x) {
            return None;
        }
        let device = x.device();
        let [b, c, h, w] = x.dims();
        let g = norm.num_groups;
        if g == 0 || !c.is_multiple_of(g) {
            return None;
        }
        let xs = host(x.clone())?;
        let gamma = match &norm.gamma {
            Some(p) => host1(p.val())?,
            None => vec![1.0; c],
        };
        let beta = match &norm.beta {
            Some(p) => host1(p.val())?,
            None => vec![0.0; c],
        };
        let (scale, shift) = match scale_shift {
            Some((s, t)) => (Some(host(s.clone())?), Some(host(t.clone())?)),
            None => (None, None),
        };
        let (cg, hw) = (c / g, h * w);
        let group_len = cg * hw;
        let eps = norm.epsilon;
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(group_len).zip(xs.par_chunks(group_len)).enumerate().for_each(|(k, (o, xg))| {
            let (n, gi) = (k / g, k % g);
            let (mut sum, mut sq) = (0f64, 0f64);
            for &v in xg {
                let v = f64::from(v);
                sum += v;
                sq += v * v;
            }
            let len = group_len as f64;
            let mean = sum / len;
            let var = (sq / len - mean * mean).max(0.0);
            let rstd = 1.0 / (var + eps).sqrt();
            for ci in 0..cg {
                let ch = gi * cg + ci;
                // y = (x − μ)·rstd·γ + β, then ·(1 + s) + t: one multiply-add per element.
                let mut a = (rstd * f64::from(gamma[ch])) as f32;
                let mut bias = (f64::from(beta[ch]) - mean * rstd * f64::from(gamma[ch])) as f32;
                if let (Some(s), Some(t)) = (&scale, &shift) {
                    let (s, t) = (s[n * c + ch], t[n * c + ch]);
                    a *= 1.0 + s;
                    bias = bias * (1.0 + s) + t;
                }
                let (src, dst) = (&xg[ci * hw..(ci + 1) * hw], &mut o[ci * hw..(ci + 1) * hw]);
                if apply_silu {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        let z = v * a + bias;
                        *d = z / (1.0 + (-z).exp());
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v * a + bias;
                    }
                }
            }
        });
        Some(Tensor::from_data(TensorData::new(out, [b, c, h, w]), &device))
    }
}
