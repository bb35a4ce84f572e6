//! Helpers shared by the test modules.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// The CPU device every test runs on.
pub fn device() -> Device {
    Device::flex()
}

/// A tensor from flat `f32` values.
pub fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

/// Per-sample timesteps.
pub fn timesteps(t: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = t.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, [t.len()]), device)
}

/// Flat `f32` values of a tensor.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

/// Asserts `|a − e| ≤ atol + rtol·|e|` elementwise, naming the first mismatch.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], rtol: f64, atol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let ok = if e.is_infinite() || e.is_nan() {
            a == e || (a.is_nan() && e.is_nan())
        } else {
            (a - e).abs() <= atol + rtol * e.abs()
        };
        assert!(ok, "{what}[{i}]: got {a:e}, expected {e:e} (|diff| = {:e})", (a - e).abs());
    }
}

/// [`assert_close`] for an `f32` tensor.
#[track_caller]
pub fn assert_tensor_close<const D: usize>(what: &str, actual: Tensor<D>, expected: &[f64], tol: f64) {
    let a: Vec<f64> = values(actual).into_iter().map(f64::from).collect();
    assert_close(what, &a, expected, tol, tol);
}

/// Deterministic host-side random data (the device RNG is global and shared by tests running in
/// parallel, so tests that compare two runs draw their inputs here).
pub fn host_random<const D: usize>(shape: [usize; D], normal: bool, seed: u64, device: &Device) -> Tensor<D> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            if normal {
                // Box-Muller.
                let v: f64 = rng.random();
                ((-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            } else {
                (2.0 * u - 1.0) as f32
            }
        })
        .collect();
    tensor(&data, shape, device)
}
