//! The sinusoidal timestep embedding of the Transformer, as ADM uses it.

use burn::tensor::{Tensor, TensorData};

/// The default maximum period: the lowest frequency is 1/10 000.
pub const MAX_PERIOD: f64 = 10_000.0;

/// The `dim / 2` frequencies of the embedding, f_i = exp(−ln(max_period) · i / half), in f32 in
/// the reference's order of operations.
pub(crate) fn frequencies(dim: usize, max_period: f64) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period.ln() as f32);
    (0..half).map(|i| ((neg_log * i as f32) / half as f32).exp()).collect()
}

/// Sinusoidal embeddings of (possibly fractional) timesteps: for `half = dim / 2` frequencies
/// f_i = exp(−ln(max_period) · i / half), the embedding is `[cos(t f_0), …, cos(t f_{half−1}),
/// sin(t f_0), …, sin(t f_{half−1})]` — cosines first — padded with a zero column when `dim` is odd.
///
/// # Shapes
/// `timesteps: [N]` → `[N, dim]`.
pub fn timestep_embedding(timesteps: Tensor<1>, dim: usize, max_period: f64) -> Tensor<2> {
    let device = timesteps.device();
    let n = timesteps.dims()[0];
    let half = dim / 2;
    let freqs = frequencies(dim, max_period);
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = timesteps.reshape([n, 1]) * freqs;
    let mut parts = vec![args.clone().cos(), args.sin()];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros([n, 1], &device));
    }
    Tensor::cat(parts, 1)
}
