//! Timestep samplers for training: uniform, and the loss-second-moment importance sampler of
//! Nichol & Dhariwal (2021), §3.3 (Eq. 18): p_t ∝ √E\[L_t²\], with a uniform mix for safety.
//!
//! Both return, with each timestep, the importance weight 1/(T·p_t) that keeps the objective's
//! mean unchanged. The importance sampler's state ([`LossSecondMomentSampler`]) is plain data with
//! serde, so that a resumed run continues exactly where it stopped.

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Timesteps drawn for a batch and their importance weights.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepBatch {
    /// One timestep per sample, in `0..T`.
    pub timesteps: Vec<usize>,
    /// 1/(T·p_t) per sample: multiply each sample's loss by it.
    pub weights: Vec<f64>,
}

/// The normalised distribution and its cumulative sums, for inverse-CDF draws.
struct Cdf {
    p: Vec<f64>,
    cdf: Vec<f64>,
}

impl Cdf {
    fn new(w: &[f64]) -> Self {
        let total: f64 = w.iter().sum();
        let p: Vec<f64> = w.iter().map(|x| x / total).collect();
        let mut cdf = Vec::with_capacity(p.len());
        let mut acc = 0.0;
        for x in &p {
            acc += x;
            cdf.push(acc);
        }
        Self { p, cdf }
    }

    /// One draw (like `numpy.random.choice`) with its weight 1/(T·p_t).
    fn draw(&self, rng: &mut dyn RngCore, out: &mut TimestepBatch) {
        let last = *self.cdf.last().expect("a sampler has at least one timestep");
        let n = self.p.len();
        let u: f64 = rng.random::<f64>() * last;
        let idx = self.cdf.partition_point(|&c| c <= u).min(n - 1);
        out.timesteps.push(idx);
        out.weights.push(1.0 / (n as f64 * self.p[idx]));
    }
}

/// A distribution over timesteps.
pub trait TimestepSampler {
    /// Unnormalised, positive weights, one per timestep.
    fn weights(&self) -> Vec<f64>;

    /// Draws `batch_size` timesteps from p = w/Σw (inverse-CDF sampling, like `numpy.random.choice`)
    /// with weights 1/(T·p_t).
    fn sample(&self, batch_size: usize, rng: &mut dyn RngCore) -> TimestepBatch {
        let cdf = Cdf::new(&self.weights());
        let mut out = TimestepBatch {
            timesteps: Vec::with_capacity(batch_size),
            weights: Vec::with_capacity(batch_size),
        };
        for _ in 0..batch_size {
            cdf.draw(rng, &mut out);
        }
        out
    }

    /// One timestep from each of `rngs` (e.g. one stream per example, so that a draw does not
    /// depend on the batching); the same draws as [`Self::sample`]`(1, rng)` for each, with the
    /// weights computed once.
    fn sample_each(&self, rngs: &mut dyn Iterator<Item = &mut dyn RngCore>) -> TimestepBatch {
        let cdf = Cdf::new(&self.weights());
        let mut out = TimestepBatch { timesteps: Vec::new(), weights: Vec::new() };
        for rng in rngs {
            cdf.draw(rng, &mut out);
        }
        out
    }

    /// Feeds the per-sample losses of a batch (no-op for samplers that do not learn).
    fn update(&mut self, _timesteps: &[usize], _losses: &[f64]) -> Result<()> {
        Ok(())
    }
}

/// Uniform timesteps; every weight is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniformSampler {
    num_timesteps: usize,
}

impl UniformSampler {
    /// Over `0..num_timesteps`.
    pub fn new(num_timesteps: usize) -> Result<Self> {
        if num_timesteps == 0 {
            return Err(Error::NoTimesteps);
        }
        Ok(Self { num_timesteps })
    }
}

impl TimestepSampler for UniformSampler {
    fn weights(&self) -> Vec<f64> {
        vec![1.0; self.num_timesteps]
    }
}

/// Importance sampling by the second moment of the loss: keeps the last `history_per_term`
/// losses of every timestep; once every timestep has a full history, p_t ∝ √mean(L_t²), mixed
/// with a uniform distribution of weight `uniform_prob`. Until then it samples uniformly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSecondMomentSampler {
    history_per_term: usize,
    uniform_prob: f64,
    /// `[T][history_per_term]`, oldest first.
    loss_history: Vec<Vec<f64>>,
    /// How many losses each timestep holds (≤ `history_per_term`).
    loss_counts: Vec<usize>,
}

impl LossSecondMomentSampler {
    /// The reference settings: a history of 10 losses per timestep, uniform mix 0.001.
    pub fn new(num_timesteps: usize) -> Result<Self> {
        Self::with_settings(num_timesteps, 10, 0.001)
    }

    /// Custom history length and uniform mix (in [0, 1]).
    pub fn with_settings(num_timesteps: usize, history_per_term: usize, uniform_prob: f64) -> Result<Self> {
        if num_timesteps == 0 {
            return Err(Error::NoTimesteps);
        }
        if history_per_term == 0 {
            return Err(Error::InvalidSamplerState("history_per_term must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&uniform_prob) {
            return Err(Error::InvalidSamplerState(format!(
                "uniform_prob = {uniform_prob} is outside [0, 1]"
            )));
        }
        Ok(Self {
            history_per_term,
            uniform_prob,
            loss_history: vec![vec![0.0; history_per_term]; num_timesteps],
            loss_counts: vec![0; num_timesteps],
        })
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        self.loss_counts.len()
    }

    /// Whether every timestep has a full history (so the weights are no longer uniform).
    pub fn warmed_up(&self) -> bool {
        self.loss_counts.iter().all(|&c| c == self.history_per_term)
    }

    /// Checks a state restored from elsewhere (e.g. a checkpoint) against a process of
    /// `num_timesteps` steps.
    pub fn validate(&self, num_timesteps: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSamplerState(m));
        if self.loss_counts.len() != num_timesteps || self.loss_history.len() != num_timesteps {
            return bad(format!(
                "state is for {} timesteps, the process has {num_timesteps}",
                self.loss_counts.len()
            ));
        }
        if let Some(t) = self.loss_history.iter().position(|h| h.len() != self.history_per_term) {
            return bad(format!("history of timestep {t} does not have {} entries", self.history_per_term));
        }
        if let Some(t) = self.loss_counts.iter().position(|&c| c > self.history_per_term) {
            return bad(format!("timestep {t} counts more losses than its history holds"));
        }
        if !(0.0..=1.0).contains(&self.uniform_prob) {
            return bad(format!("uniform_prob = {} is outside [0, 1]", self.uniform_prob));
        }
        Ok(())
    }
}

impl TimestepSampler for LossSecondMomentSampler {
    fn weights(&self) -> Vec<f64> {
        let n = self.num_timesteps();
        if !self.warmed_up() {
            return vec![1.0; n];
        }
        let mut w: Vec<f64> = self
            .loss_history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = w.iter().sum();
        for x in &mut w {
            *x /= total;
            *x *= 1.0 - self.uniform_prob;
            *x += self.uniform_prob / n as f64;
        }
        w
    }

    fn update(&mut self, timesteps: &[usize], losses: &[f64]) -> Result<()> {
        if timesteps.len() != losses.len() {
            return Err(Error::InvalidSamplerUpdate(format!(
                "{} timesteps but {} losses",
                timesteps.len(),
                losses.len()
            )));
        }
        let n = self.num_timesteps();
        if let Some(&t) = timesteps.iter().find(|&&t| t >= n) {
            return Err(Error::InvalidSamplerUpdate(format!("timestep {t} is out of range for T = {n}")));
        }
        if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
            return Err(Error::InvalidSamplerUpdate(format!(
                "loss {} at timestep {} is not finite",
                losses[i], timesteps[i]
            )));
        }
        for (&t, &loss) in timesteps.iter().zip(losses) {
            let hist = &mut self.loss_history[t];
            if self.loss_counts[t] == self.history_per_term {
                hist.rotate_left(1);
                *hist.last_mut().expect("non-empty history") = loss;
            } else {
                hist[self.loss_counts[t]] = loss;
                self.loss_counts[t] += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sample_each_draws_what_sample_draws_from_each_stream() {
        let mut s = LossSecondMomentSampler::with_settings(5, 1, 0.1).unwrap();
        s.update(&[0, 1, 2, 3, 4], &[0.5, 1.0, 4.0, 2.0, 0.1]).unwrap();
        let streams = || (0..16u64).map(rand_chacha::ChaCha8Rng::seed_from_u64).collect::<Vec<_>>();
        let mut each = streams();
        let mut it = each.iter_mut().map(|r| r as &mut dyn RngCore);
        let got = s.sample_each(&mut it);
        let mut one = streams();
        let (mut ts, mut ws) = (Vec::new(), Vec::new());
        for r in one.iter_mut() {
            let b = s.sample(1, r);
            ts.push(b.timesteps[0]);
            ws.push(b.weights[0]);
        }
        assert_eq!(got.timesteps, ts);
        assert_eq!(got.weights, ws);
        assert!(ts.iter().any(|&t| t != ts[0]), "16 draws over 5 timesteps vary");
    }

    #[test]
    fn uniform_until_warm_then_second_moment() {
        let mut s = LossSecondMomentSampler::with_settings(3, 2, 0.0).unwrap();
        assert_eq!(s.weights(), vec![1.0; 3]);
        s.update(&[0, 1, 2, 0, 1], &[1.0, 2.0, 3.0, 1.0, 2.0]).unwrap();
        assert!(!s.warmed_up(), "timestep 2 has one loss of two");
        s.update(&[2], &[3.0]).unwrap();
        assert!(s.warmed_up());
        // sqrt(mean(L^2)) = [1, 2, 3] -> normalised [1/6, 2/6, 3/6].
        let w = s.weights();
        for (a, b) in w.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((a - b).abs() < 1e-15);
        }
        // A full history shifts out the oldest loss.
        s.update(&[0], &[7.0]).unwrap();
        assert_eq!(s.loss_history[0], vec![1.0, 7.0]);
    }

    #[test]
    fn importance_weights_are_one_over_t_p() {
        let mut s = LossSecondMomentSampler::with_settings(4, 1, 0.0).unwrap();
        s.update(&[0, 1, 2, 3], &[1.0, 1.0, 1.0, 5.0]).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let b = s.sample(2000, &mut rng);
        // p = [1, 1, 1, 5] / 8: weight 1 / (4 p) = 2 for t < 3 and 0.4 for t = 3.
        for (t, w) in b.timesteps.iter().zip(&b.weights) {
            let expect = if *t == 3 { 0.4 } else { 2.0 };
            assert!((w - expect).abs() < 1e-12);
        }
        let frac3 = b.timesteps.iter().filter(|&&t| t == 3).count() as f64 / 2000.0;
        assert!((frac3 - 0.625).abs() < 0.05, "t = 3 drawn with frequency {frac3}, expected 5/8");
    }

    #[test]
    fn bad_updates_are_errors() {
        let mut s = LossSecondMomentSampler::new(5).unwrap();
        assert!(s.update(&[0, 1], &[1.0]).is_err());
        assert!(s.update(&[5], &[1.0]).is_err());
        assert!(s.update(&[1], &[f64::NAN]).is_err());
        assert!(s.validate(6).is_err());
        assert!(s.validate(5).is_ok());
    }
}
