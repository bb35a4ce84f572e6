//! Built-in 2-D point sets, generated deterministically from a seed (ChaCha8, stable across
//! platforms and versions).

use std::f64::consts::PI;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The toy distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toy {
    /// The swiss roll of the survey's Fig. 3: (t cos t, t sin t)/10, t ∈ [1.5π, 4.5π], noise σ = 0.05.
    SwissRoll,
    /// Two interleaved half circles, noise σ = 0.05.
    Moons,
    /// Eight Gaussians (σ = 0.05) on a circle of radius √2.
    EightGaussians,
    /// A 4×4 checkerboard on [−2, 2]² (FFJORD's), uniform on the dark squares.
    Checkerboard,
}

impl FromStr for Toy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "swissroll" => Ok(Self::SwissRoll),
            "moons" | "twomoons" => Ok(Self::Moons),
            "8gaussians" | "eightgaussians" => Ok(Self::EightGaussians),
            "checkerboard" => Ok(Self::Checkerboard),
            _ => Err(format!("unknown point set {s:?}")),
        }
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; 1 - u avoids ln(0).
    let u: f64 = rng.random();
    let v: f64 = rng.random();
    (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * PI * v).cos()
}

impl Toy {
    /// `n` points drawn with `seed`.
    pub fn sample(self, n: usize, seed: u64) -> Vec<[f32; 2]> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (x, y) = match self {
                    Self::SwissRoll => {
                        let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f64>());
                        (
                            t * t.cos() / 10.0 + 0.05 * normal(&mut rng),
                            t * t.sin() / 10.0 + 0.05 * normal(&mut rng),
                        )
                    }
                    Self::Moons => {
                        let th = PI * rng.random::<f64>();
                        let (x, y) = if rng.random::<bool>() {
                            (th.cos(), th.sin())
                        } else {
                            (1.0 - th.cos(), 0.5 - th.sin())
                        };
                        (x - 0.5 + 0.05 * normal(&mut rng), y - 0.25 + 0.05 * normal(&mut rng))
                    }
                    Self::EightGaussians => {
                        let k = rng.random_range(0..8) as f64;
                        let a = k * PI / 4.0;
                        (
                            a.cos() * 2f64.sqrt() + 0.05 * normal(&mut rng),
                            a.sin() * 2f64.sqrt() + 0.05 * normal(&mut rng),
                        )
                    }
                    Self::Checkerboard => {
                        let x1 = rng.random::<f64>() * 4.0 - 2.0;
                        let x2 = rng.random::<f64>() - 2.0 * f64::from(rng.random_range(0..2u8));
                        (x1, x2 + (x1.floor().rem_euclid(2.0)))
                    }
                };
                [x as f32, y as f32]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_points_other_seed_other_points() {
        for toy in [Toy::SwissRoll, Toy::Moons, Toy::EightGaussians, Toy::Checkerboard] {
            assert_eq!(toy.sample(100, 3), toy.sample(100, 3));
            assert_ne!(toy.sample(100, 3), toy.sample(100, 4));
        }
    }

    #[test]
    fn each_set_has_its_shape() {
        // Swiss roll: radius |p| = t/10 in [0.47, 1.41] (plus noise).
        for p in Toy::SwissRoll.sample(2000, 1) {
            let r = f64::from(p[0]).hypot(f64::from(p[1]));
            assert!((0.3..1.7).contains(&r), "{p:?}");
        }
        // Eight Gaussians: every point within 0.3 of one of the 8 centres.
        for p in Toy::EightGaussians.sample(2000, 1) {
            let near = (0..8).any(|k| {
                let a = f64::from(k) * PI / 4.0;
                (f64::from(p[0]) - a.cos() * 2f64.sqrt()).hypot(f64::from(p[1]) - a.sin() * 2f64.sqrt()) < 0.3
            });
            assert!(near, "{p:?}");
        }
        // Checkerboard: inside [-2, 2]^2 and on squares where floor(x) + floor(y) is even.
        for p in Toy::Checkerboard.sample(2000, 1) {
            assert!(p[0].abs() <= 2.0 && p[1].abs() <= 2.0, "{p:?}");
            assert_eq!((p[0].floor() as i64 + p[1].floor() as i64).rem_euclid(2), 0, "{p:?}");
        }
        // Moons: two clusters, about half the points each side of the line y = x/2 - ... ; check the spread.
        let m = Toy::Moons.sample(2000, 1);
        let mean_x = m.iter().map(|p| f64::from(p[0])).sum::<f64>() / 2000.0;
        assert!(mean_x.abs() < 0.1, "moons are centred: {mean_x}");
        assert_eq!("swiss_roll".parse(), Ok(Toy::SwissRoll));
        assert!("spiral".parse::<Toy>().is_err());
    }
}
