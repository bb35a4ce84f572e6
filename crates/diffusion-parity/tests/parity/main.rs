//! The backend-parity suite (one test binary: burn is linked once). See the crate docs.
//!
//! - `networks`: forward passes and gradients of guided-diffusion's own networks (fixtures from
//!   `tools/gen_models_reference.py` and `tools/gen_gradient_reference.py`), on the baseline and
//!   on every target.

mod networks;
mod sampling;
mod training;

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;

/// A fixture of diffusion-models' reference tests.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../diffusion-models/tests/it/fixtures").join(name)
}

/// The numbers of a JSON array.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

/// A tensor from a fixture's `{shape, data}`.
pub fn tensor_of<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let shape: Vec<usize> =
        v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    Tensor::from_data(TensorData::new(floats(&v["data"]), shape), device)
}
