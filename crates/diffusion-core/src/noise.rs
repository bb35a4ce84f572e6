//! Reproducible noise: the noise of sample `i` at step `k` is a function of `(seed, i, k)` only,
//! so the same seed gives the same images whatever the batch size, the order of batches or the
//! number of machines (`--shard K/N`).

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The step index used for the initial noise x_T.
pub const INITIAL_STEP: u64 = u64::MAX;

/// The named random streams derived from a run's or a command's seed, in one place, so that no
/// two uses of one seed draw the same numbers by accident (e.g. the class labels of a sample
/// grid and its noise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeedStream {
    /// The sampling noise (x_T and every step): the seed itself.
    Noise,
    /// Class labels drawn per sample id when none is given.
    ClassLabels,
    /// The noise of the sample grids a training run writes at its checkpoints.
    TrainingGrid,
    /// The data drawn beside a sample set for comparison (2-D point sets).
    ReferenceData,
    /// Held-out data for evaluation (a seed no training run's data uses).
    HeldOutData,
}

impl SeedStream {
    /// The seed of this stream for the base seed `seed`.
    pub fn seed(self, seed: u64) -> u64 {
        match self {
            SeedStream::Noise => seed,
            SeedStream::ClassLabels => seed ^ 0xC1A55,
            SeedStream::TrainingGrid => seed ^ 0x005A_4D9E,
            SeedStream::ReferenceData => seed.wrapping_add(1),
            SeedStream::HeldOutData => seed.wrapping_add(1_000_003),
        }
    }

    /// A [`NoiseSource`] on this stream.
    pub fn source(self, seed: u64) -> NoiseSource {
        NoiseSource::new(self.seed(seed))
    }
}

/// A seeded source of standard-normal noise, addressed by sample id and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseSource {
    seed: u64,
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl NoiseSource {
    /// Noise for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The ChaCha8 stream of sample `id` at `step` (for draws other than normals: timesteps, flips).
    pub fn rng(&self, id: u64, step: u64) -> ChaCha8Rng {
        let key = mix(mix(self.seed ^ 0x5851_f42d_4c95_7f2d)
            ^ mix(id.wrapping_add(0x9e37_79b9_7f4a_7c15))
            ^ step.rotate_left(17));
        ChaCha8Rng::seed_from_u64(key)
    }

    /// A uniform index in `0..n` for sample `id` at `step` (e.g. a class label drawn per sample).
    pub fn index(&self, id: u64, step: u64, n: usize) -> usize {
        self.rng(id, step).random_range(0..n.max(1))
    }

    /// `n` standard normals for sample `id` at `step` (Box–Muller on a ChaCha8 stream).
    pub fn sample_values(&self, id: u64, step: u64, n: usize) -> Vec<f32> {
        let mut rng = self.rng(id, step);
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u: f64 = rng.random();
            let v: f64 = rng.random();
            let r = (-2.0 * (1.0 - u).ln()).sqrt();
            let a = std::f64::consts::TAU * v;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A batch of noise for samples `ids` at `step`, each of shape `item` (so the result is
    /// `[ids.len(), item…]`).
    pub fn batch<const D: usize>(
        &self,
        ids: &[u64],
        step: u64,
        item: [usize; D],
        device: &Device,
    ) -> Tensor<D> {
        let steps = vec![step; ids.len()];
        self.batch_steps(ids, &steps, item, device)
    }

    /// Like [`Self::batch`], with a step per sample.
    pub fn batch_steps<const D: usize>(
        &self,
        ids: &[u64],
        steps: &[u64],
        item: [usize; D],
        device: &Device,
    ) -> Tensor<D> {
        assert!(D >= 1 && item[0] == 1, "item shape must be [1, …] (the batch dimension is filled in)");
        assert_eq!(ids.len(), steps.len(), "one step per sample");
        let per: usize = item[1..].iter().product();
        let mut data = Vec::with_capacity(ids.len() * per);
        for (&id, &step) in ids.iter().zip(steps) {
            data.extend(self.sample_values(id, step, per));
        }
        let mut shape = item;
        shape[0] = ids.len();
        Tensor::from_data(TensorData::new(data, shape), device)
    }
}
