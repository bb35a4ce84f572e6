//! Integration tests of diffusion-models (one binary: burn is linked once).
//!
//! - `reference`: PyTorch checkpoints and outputs produced by openai/guided-diffusion@22e0df8
//!   itself (`tools/gen_models_reference.py`), imported and compared to 1e-4.
//! - `blocks`: per-block checks against values derived by hand.
//! - `networks`: shapes, forward + backward, checkpoints.

mod blocks;
mod networks;
mod ops;
mod reference;

use burn::tensor::{Device, Tensor, TensorData};

/// The CPU device the tests run on.
pub fn device() -> Device {
    Device::flex()
}

/// Flat f32 values of a tensor.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

/// A tensor from flat values.
pub fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Deterministic host-side pseudo-random values in [-1, 1).
pub fn host_uniform<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..n)
        .map(|_| {
            // xorshift64*
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    tensor(data, shape, device)
}

/// Asserts |a − e| ≤ tol·max(1, |e|) elementwise.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol * e.abs().max(1.0), "{what}[{i}]: {a} vs {e}");
    }
}

/// Replaces every float parameter by small pseudo-random values, so that zero-initialised layers
/// do not hide a path through the network.
pub fn randomise<M: burn::module::Module>(module: M, seed: u64) -> M {
    struct Randomise(u64);
    impl burn::module::ModuleMapper for Randomise {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            self.0 += 1;
            let seed = self.0;
            param.map(|t| {
                let dims = t.dims();
                let dev = t.device();
                let r = host_uniform(dims, seed, &dev).mul_scalar(0.1);
                if t.is_require_grad() { r.require_grad() } else { r }
            })
        }
    }
    module.map(&mut Randomise(seed))
}
