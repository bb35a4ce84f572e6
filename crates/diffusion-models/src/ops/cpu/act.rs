//! SiLU, `x·σ(x)`, element-wise with [`exp_f32`](super::norm::exp_f32) (vectorised) instead of a
//! library `expf` per element; on the autodiff device one node whose backward is
//! `dy·σ(x)·(1 + x·(1 − σ(x)))`.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::norm::exp_f32;
use super::{Ad, FlexFloat, contiguous_f32, dispatch, flex_from};

/// Elements per parallel task (below this, one thread: the split costs more than it saves).
const GRAIN: usize = 1 << 15;

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

/// Runs `f` in an AVX2 + FMA context; `f` (a closure over `#[inline(always)]` code) is inlined
/// into it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn avx2(f: impl FnOnce()) {
    f()
}

/// Runs `f` in an AVX-512 context (see [`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn avx512(f: impl FnOnce()) {
    f()
}

fn map2(a: &[f32], b: Option<&[f32]>, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let run = |o: &mut [f32], a: &[f32], b: Option<&[f32]>| match b {
        Some(b) => o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = f(x, y)),
        None => o.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x, 0.0)),
    };
    let run = |o: &mut [f32], a: &[f32], b: Option<&[f32]>| {
        dispatch!(avx512(|| run(o, a, b)), avx2(|| run(o, a, b)), run(o, a, b))
    };
    if a.len() <= GRAIN {
        run(&mut out, a, b);
    } else {
        out.par_chunks_mut(GRAIN).enumerate().for_each(|(i, o)| {
            let r = i * GRAIN..i * GRAIN + o.len();
            run(o, &a[r.clone()], b.map(|b| &b[r]));
        });
    }
    out
}

#[derive(Debug)]
struct SiluBackward;

impl Backward<Flex, 1> for SiluBackward {
    type State = (FlexFloat, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (x, shape) = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let xs = x.as_slice::<f32>().expect("contiguous f32 input");
            let dx = map2(dy.as_slice::<f32>().expect("contiguous f32 gradient"), Some(xs), |d, x| {
                let s = sigmoid(x);
                d * s * (1.0 + x * (1.0 - s))
            });
            grads.register::<Flex>(node.id, flex_from(dx, shape));
        }
    }
}

/// SiLU on the CPU device, plain or autodiff; `None` elsewhere.
pub fn silu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let shape = x.dims().to_vec();
    if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
        let p = contiguous_f32(p)?;
        let out = map2(p.as_slice::<f32>()?, None, |v, _| v * sigmoid(v));
        return Some(Tensor::from_primitive::<Flex>(flex_from(out, shape)));
    }
    let a = x.clone().try_into_primitive::<Ad>().ok()?;
    let p = contiguous_f32(a.primitive().clone())?;
    let out = flex_from(map2(p.as_slice::<f32>()?, None, |v, _| v * sigmoid(v)), shape.clone());
    let result = match SiluBackward.prepare::<NoCheckpointing>([a.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((p, shape), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}

/// murmur3's 32-bit finaliser: a bijection that mixes every input bit into every output bit.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The dropout multipliers of elements `offset..offset + out.len()`: `1/keep` where the hash of
/// (key, index) falls below `keep`, else 0.
#[inline(always)]
fn mask_body(out: &mut [f32], offset: usize, [k0, k1]: [u32; 2], keep: f32) {
    let scale = 1.0 / keep;
    for (j, m) in out.iter_mut().enumerate() {
        let i = (offset + j) as u32;
        let h = fmix32(fmix32(i.wrapping_mul(0x9e37_79b9) ^ k0) ^ k1);
        // 24 uniform bits → [0, 1).
        let u = (h >> 8) as f32 * (1.0 / 16_777_216.0);
        *m = if u < keep { scale } else { 0.0 };
    }
}

super::simd_variant!(
    /// See [`mask_body`].
    fn mask => mask_body(out: &mut [f32], offset: usize, key: [u32; 2], keep: f32)
);

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    type State = (FlexFloat, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (mask, shape) = ops.state;
        let dy = contiguous_f32(grads.consume::<Flex>(&ops.node)).expect("f32 output gradient");
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let m = mask.as_slice::<f32>().expect("contiguous f32 mask");
            let dx = map2(dy.as_slice::<f32>().expect("contiguous f32 gradient"), Some(m), |d, m| d * m);
            grads.register::<Flex>(node.id, flex_from(dx, shape));
        }
    }
}

/// Inverted dropout with probability `prob` on the autodiff CPU device: one pass that draws the
/// mask from a counter-based hash keyed by 64 bits taken from the device's seeded generator (so
/// a run stays a function of its seed), multiplies, and keeps the mask for the backward pass.
/// `None` on other devices.
pub fn dropout<const D: usize>(x: &Tensor<D>, prob: f64) -> Option<Tensor<D>> {
    let a = x.clone().try_into_primitive::<Ad>().ok()?;
    let p = contiguous_f32(a.primitive().clone())?;
    let xs = p.as_slice::<f32>()?;
    let shape = x.dims().to_vec();
    // 4 × 16 bits from the device's generator.
    let draws = Tensor::<1>::random([4], burn::tensor::Distribution::Uniform(0.0, 65_536.0), &x.device())
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .ok()?;
    let bits: Vec<u32> = draws.iter().map(|&v| (v as u32) & 0xffff).collect();
    let key = [bits[0] << 16 | bits[1], bits[2] << 16 | bits[3]];
    let keep = (1.0 - prob) as f32;
    let mut m = vec![0f32; xs.len()];
    m.par_chunks_mut(GRAIN).enumerate().for_each(|(i, c)| mask(c, i * GRAIN, key, keep));
    let out = flex_from(map2(xs, Some(&m), |x, m| x * m), shape.clone());
    let mask = flex_from(m, shape.clone());
    let result = match DropoutBackward.prepare::<NoCheckpointing>([a.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((mask, shape), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(result))
}
