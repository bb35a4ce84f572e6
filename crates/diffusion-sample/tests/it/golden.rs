//! Reading the diffusers fixtures: float lists, stacked tensors, the scaled comparison and the
//! loop noise that replays diffusers' per-step draws.

use burn::tensor::{Device, Tensor, TensorData};
use diffusion_sample::LoopNoise;
use serde_json::Value;

/// A JSON list of float32 values (shortest f32 decimals), parsed as f32.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A JSON list of float64 values.
pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// float32 values as f64 (parsed as f32 first: "0.9999" is the f32 nearest it, not the f64).
pub fn f32s_as_f64(v: &Value) -> Vec<f64> {
    floats(v).into_iter().map(f64::from).collect()
}

fn shape(v: &Value) -> Vec<usize> {
    v["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect()
}

/// A `{"shape", "data"}` tensor of rank 4.
pub fn tensor4(v: &Value, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(floats(&v["data"]), shape(v)), device)
}

/// Slice `k` of a stacked `[N, …]` tensor.
pub fn slice(v: &Value, k: usize, device: &Device) -> Tensor<4> {
    let shape = shape(v);
    let per: usize = shape[1..].iter().product();
    let data: Vec<f32> = v["data"].as_array().unwrap()[k * per..(k + 1) * per]
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, shape[1..].to_vec()), device)
}

/// A tensor's values.
pub fn values(t: &Tensor<4>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `|a − b| ≤ tol · max(1, max |b|)` elementwise.
pub fn assert_close_to_scale(got: &Tensor<4>, want: &Tensor<4>, tol: f32, what: &str) {
    let (got, want) = (values(got), values(want));
    assert_eq!(got.len(), want.len(), "{what}: size");
    let scale = want.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}: element {i}: ours {a}, diffusers {b} (scale {scale})");
    }
}

/// diffusers' noise by step: the loops key step k of n as level n − 1 − k, and diffusers' k-th
/// draw is `noises[k]`.
pub struct StepNoise<'a> {
    /// The fixture's stacked noises.
    pub noises: &'a Value,
    /// The initial latent.
    pub x_t: Tensor<4>,
    /// Steps of the run.
    pub n: usize,
    /// Where to build the tensors.
    pub device: Device,
}

impl LoopNoise<4> for StepNoise<'_> {
    fn initial(&self) -> Tensor<4> {
        self.x_t.clone()
    }

    fn step(&self, key: u64) -> Tensor<4> {
        let level = (key >> 20) as usize;
        slice(self.noises, self.n - 1 - level, &self.device)
    }
}
