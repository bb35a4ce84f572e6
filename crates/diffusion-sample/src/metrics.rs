//! Distances between 2-D sample sets and data (for the point models): the sliced Wasserstein-2
//! distance and the RBF-kernel maximum mean discrepancy. Host computations on point lists.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sliced Wasserstein-2 distance: the root mean, over `projections` random directions (seeded), of
/// the squared W2 distance between the 1-D projections (quantiles matched after sorting; the
/// larger set is subsampled at evenly spaced ranks to the smaller size).
pub fn sliced_wasserstein(a: &[[f32; 2]], b: &[[f32; 2]], projections: usize, seed: u64) -> f64 {
    assert!(!a.is_empty() && !b.is_empty(), "sliced_wasserstein needs non-empty sets");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    sliced(a.len().min(b.len()), projections, || {
        let angle = rng.random::<f64>() * std::f64::consts::TAU;
        let (c, s) = (angle.cos(), angle.sin());
        let proj =
            |p: &[[f32; 2]]| p.iter().map(|q| f64::from(q[0]) * c + f64::from(q[1]) * s).collect::<Vec<_>>();
        (proj(a), proj(b))
    })
}

/// Sliced Wasserstein-2 distance between sets of D-dimensional vectors (e.g. flattened images):
/// as [`sliced_wasserstein`], the directions drawn uniformly on the unit sphere of R^D (normalised
/// Gaussian vectors, seeded). A shift by d gives |d|/√D.
///
/// # Errors
/// An empty set, or vectors of different lengths, give [`MetricError`].
pub fn sliced_wasserstein_nd(
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    projections: usize,
    seed: u64,
) -> Result<f64, MetricError> {
    let dim = a.first().map(Vec::len).ok_or(MetricError::Empty)?;
    if b.is_empty() {
        return Err(MetricError::Empty);
    }
    if let Some(bad) = a.iter().chain(b).map(Vec::len).find(|&l| l != dim) {
        return Err(MetricError::Dimension { expected: dim, got: bad });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(sliced(a.len().min(b.len()), projections, || {
        let mut u: Vec<f64> = (0..dim)
            .map(|_| {
                let (p, q): (f64, f64) = (rng.random(), rng.random());
                (-2.0 * (1.0 - p).ln()).sqrt() * (std::f64::consts::TAU * q).cos()
            })
            .collect();
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        u.iter_mut().for_each(|x| *x /= norm);
        let proj = |s: &[Vec<f32>]| {
            s.iter()
                .map(|v| v.iter().zip(&u).map(|(x, w)| f64::from(*x) * w).sum::<f64>())
                .collect::<Vec<_>>()
        };
        (proj(a), proj(b))
    }))
}

/// The root mean, over `projections` draws of `project` (both sets projected on one random
/// direction), of the squared 1-D W2 distance at `n` matched quantiles.
fn sliced(n: usize, projections: usize, mut project: impl FnMut() -> (Vec<f64>, Vec<f64>)) -> f64 {
    let quantiles = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let m = v.len();
        (0..n).map(|k| v[(k * m + m / 2) / n.max(1) % m.max(1)]).collect::<Vec<_>>()
    };
    let mut total = 0.0;
    for _ in 0..projections.max(1) {
        let (pa, pb) = project();
        let (pa, pb) = (quantiles(pa), quantiles(pb));
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / n as f64;
    }
    (total / projections.max(1) as f64).sqrt()
}

/// Why a distance between sample sets cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// A set has no elements.
    #[error("a sample set is empty")]
    Empty,
    /// The vectors differ in length.
    #[error("vectors of length {expected} and {got} cannot be compared")]
    Dimension {
        /// The first vector's length.
        expected: usize,
        /// The first differing length.
        got: usize,
    },
}

/// Unbiased squared maximum mean discrepancy with the Gaussian kernel exp(−‖x − y‖² / (2 h²)).
pub fn mmd_rbf(a: &[[f32; 2]], b: &[[f32; 2]], bandwidth: f64) -> f64 {
    assert!(a.len() > 1 && b.len() > 1, "mmd_rbf needs at least two points per set");
    let k = |p: &[f32; 2], q: &[f32; 2]| {
        let d2 = (f64::from(p[0]) - f64::from(q[0])).powi(2) + (f64::from(p[1]) - f64::from(q[1])).powi(2);
        (-d2 / (2.0 * bandwidth * bandwidth)).exp()
    };
    let within = |s: &[[f32; 2]]| {
        let mut sum = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if i != j {
                    sum += k(&s[i], &s[j]);
                }
            }
        }
        sum / (s.len() * (s.len() - 1)) as f64
    };
    let cross =
        a.iter().map(|p| b.iter().map(|q| k(p, q)).sum::<f64>()).sum::<f64>() / (a.len() * b.len()) as f64;
    within(a) + within(b) - 2.0 * cross
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, mean: [f64; 2], seed: u64) -> Vec<[f32; 2]> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random(), rng.random());
                let r = (-2.0 * (1.0 - u).ln()).sqrt();
                let a = std::f64::consts::TAU * v;
                [(mean[0] + r * a.cos()) as f32, (mean[1] + r * a.sin()) as f32]
            })
            .collect()
    }

    #[test]
    fn sliced_wasserstein_of_a_shift_is_its_projected_length() {
        // Shifting a set by d moves every 1-D projection by d·u, so SW2 = |d| √(E[cos² θ]) = |d|/√2.
        let a = gaussian(4000, [0.0, 0.0], 1);
        let b: Vec<[f32; 2]> = a.iter().map(|p| [p[0] + 3.0, p[1]]).collect();
        let sw = sliced_wasserstein(&a, &b, 400, 7);
        assert!((sw - 3.0 / 2f64.sqrt()).abs() < 0.1, "{sw}");
        assert!(sliced_wasserstein(&a, &a, 50, 7) < 1e-12);
    }

    #[test]
    fn sliced_wasserstein_nd_of_a_shift_is_its_length_over_root_d() {
        // E[(d·u)²] = |d|²/D for u uniform on the sphere of R^D; here D = 8, d = (1, …, 1)·0.5.
        let pts = |seed| {
            let g = gaussian(2000, [0.0, 0.0], seed);
            g.chunks(4).map(|c| c.iter().flat_map(|p| [p[0], p[1]]).collect::<Vec<f32>>()).collect::<Vec<_>>()
        };
        let a = pts(1);
        let b: Vec<Vec<f32>> = a.iter().map(|v| v.iter().map(|x| x + 0.5).collect()).collect();
        let sw = sliced_wasserstein_nd(&a, &b, 2000, 3).unwrap();
        let expected = (8.0f64 * 0.25).sqrt() / 8f64.sqrt();
        assert!((sw - expected).abs() < 0.02 * expected, "{sw} vs {expected}");
        assert!(sliced_wasserstein_nd(&a, &a, 20, 3).unwrap() < 1e-12);
        let short = vec![vec![0.0f32; 3]];
        assert_eq!(
            sliced_wasserstein_nd(&a, &short, 4, 0),
            Err(MetricError::Dimension { expected: 8, got: 3 })
        );
        assert_eq!(sliced_wasserstein_nd(&[], &a, 4, 0), Err(MetricError::Empty));
    }

    #[test]
    fn mmd_separates_different_distributions() {
        let a = gaussian(300, [0.0, 0.0], 1);
        let same = gaussian(300, [0.0, 0.0], 2);
        let far = gaussian(300, [2.0, 0.0], 3);
        let (m_same, m_far) = (mmd_rbf(&a, &same, 1.0), mmd_rbf(&a, &far, 1.0));
        assert!(m_same.abs() < 0.01, "{m_same}");
        assert!(m_far > 0.2, "{m_far}");
    }
}
