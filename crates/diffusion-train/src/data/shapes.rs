//! The embedded default dataset: coloured shapes on 32×32, generated from a seed.
//!
//! Four classes — disc, square, triangle, cross — each drawn at a random position, size and
//! saturated colour on a dark, slightly noisy background, so a model that learns them produces
//! samples a person can tell apart at a glance.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ImageSet;

/// Image side.
pub const SIZE: usize = 32;
/// Class names, by label.
pub const CLASSES: [&str; 4] = ["disc", "square", "triangle", "cross"];

/// Whether pixel centre (x, y) lies in shape `class` centred at (cx, cy) with half-size r.
fn inside(class: usize, x: f64, y: f64, cx: f64, cy: f64, r: f64) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    match class {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
        // Upward triangle: apex at (cx, cy - r), base at y = cy + r.
        2 => dy <= r && dy >= -r && dx.abs() <= (dy + r) / 2.0,
        _ => (dx.abs() <= r * 0.3 && dy.abs() <= r) || (dy.abs() <= r * 0.3 && dx.abs() <= r),
    }
}

/// `n` images with labels `i mod 4` (balanced), drawn with `seed`.
pub fn generate(n: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * 3 * SIZE * SIZE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % CLASSES.len();
        let r = rng.random_range(6.0..11.0);
        let cx = rng.random_range(r..SIZE as f64 - r);
        let cy = rng.random_range(r..SIZE as f64 - r);
        // A saturated colour: one channel high, one low, one random.
        let mut colour =
            [rng.random_range(200..=255u8), rng.random_range(0..60u8), rng.random_range(0..=255u8)];
        let rot = rng.random_range(0..3);
        colour.rotate_left(rot);
        let bg = rng.random_range(10..40u8);
        let mut img = vec![0u8; 3 * SIZE * SIZE];
        for y in 0..SIZE {
            for x in 0..SIZE {
                let on = inside(class, x as f64 + 0.5, y as f64 + 0.5, cx, cy, r);
                for c in 0..3 {
                    let v = if on { colour[c] } else { bg.saturating_add(rng.random_range(0..8u8)) };
                    img[(c * SIZE + y) * SIZE + x] = v;
                }
            }
        }
        pixels.extend_from_slice(&img);
        labels.push(class);
    }
    ImageSet {
        pixels,
        labels,
        channels: 3,
        size: SIZE,
        num_classes: CLASSES.len(),
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_drawn() {
        let a = generate(40, 9);
        assert_eq!(a, generate(40, 9));
        assert_ne!(a.pixels, generate(40, 10).pixels);
        for class in 0..4 {
            assert_eq!(a.labels.iter().filter(|&&l| l == class).count(), 10);
        }
        // Every image has a bright shape (some channel >= 200) on a dark background (< 48).
        for i in 0..a.len() {
            let img = a.image(i);
            let bright =
                (0..SIZE * SIZE).filter(|&p| (0..3).any(|c| img[c * SIZE * SIZE + p] >= 200)).count();
            assert!(bright > 20, "image {i} has {bright} shape pixels");
            assert!(img.iter().filter(|&&v| v < 48).count() > SIZE * SIZE, "image {i} background");
        }
        // Discs and squares of the same size differ in area: a square covers more of its box.
        let disc = (0..SIZE * SIZE)
            .filter(|&p| inside(0, (p % SIZE) as f64, (p / SIZE) as f64, 16.0, 16.0, 8.0))
            .count();
        let square = (0..SIZE * SIZE)
            .filter(|&p| inside(1, (p % SIZE) as f64, (p / SIZE) as f64, 16.0, 16.0, 8.0))
            .count();
        assert!(disc > 150 && square > 150 && disc != square);
    }
}
