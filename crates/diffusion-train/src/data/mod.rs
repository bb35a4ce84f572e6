//! Datasets: what the diffusion models learn from.
//!
//! | spec | what |
//! |---|---|
//! | `swissroll`, `moons`, `8gaussians`, `checkerboard` | 2-D point sets, generated from a seed ([`points`]) |
//! | `shapes` | coloured shapes on 32×32, 4 classes, generated from a seed ([`shapes`]) — the embedded default |
//! | `mnist:DIR` | MNIST IDX files (raw or `.gz`) in DIR ([`mnist`]) |
//! | `cifar10:DIR` | CIFAR-10 binary batches in DIR ([`cifar`]) |
//! | `folder:DIR` | PNG/JPEG images, labels from sub-folders or `label_…` file-name prefixes ([`folder`]) |
//! | `synthetic:CxS` | random C-channel S×S images with 10 labels, from a seed (benchmarks, smoke tests) |

pub mod cifar;
pub mod error;
pub mod folder;
pub mod mnist;
pub mod points;
pub mod shapes;

use std::path::PathBuf;
use std::str::FromStr;

pub use error::DataError;

/// Images as bytes, `N × C × H × W` (channel-first, like the networks), with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Pixel bytes, image after image, each `C × size × size`.
    pub pixels: Vec<u8>,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<usize>,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height = width.
    pub size: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Class names, when the source has them (folders, CIFAR-10).
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` scaled to [−1, 1] (x / 127.5 − 1, the reference's convention), optionally
    /// mirrored left–right.
    pub fn image_f32(&self, i: usize, flip: bool) -> Vec<f32> {
        let s = self.size;
        let img = self.image(i);
        let mut out = Vec::with_capacity(img.len());
        for c in 0..self.channels {
            for y in 0..s {
                for x in 0..s {
                    let xx = if flip { s - 1 - x } else { x };
                    out.push(f32::from(img[(c * s + y) * s + xx]) / 127.5 - 1.0);
                }
            }
        }
        out
    }

    /// The set at `1/factor` of the size, each pixel the rounded mean of a `factor × factor`
    /// block (a box filter).
    pub fn downsample(&self, factor: usize) -> Self {
        let (s, f) = (self.size, factor.max(1));
        let t = s / f;
        let mut pixels = Vec::with_capacity(self.len() * self.channels * t * t);
        for i in 0..self.len() {
            let img = self.image(i);
            for c in 0..self.channels {
                for y in 0..t {
                    for x in 0..t {
                        let mut sum = 0usize;
                        for dy in 0..f {
                            for dx in 0..f {
                                sum += usize::from(img[(c * s + y * f + dy) * s + x * f + dx]);
                            }
                        }
                        pixels.push(((sum + f * f / 2) / (f * f)) as u8);
                    }
                }
            }
        }
        Self { pixels, size: t, ..self.clone() }
    }
}

/// A dataset of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// 2-D points.
    Points(Vec<[f32; 2]>),
    /// Labelled images.
    Images(ImageSet),
}

impl Data {
    /// The images, if this is an image dataset.
    pub fn as_images(&self) -> Option<&ImageSet> {
        match self {
            Self::Images(s) => Some(s),
            Self::Points(_) => None,
        }
    }

    /// The points, if this is a point dataset.
    pub fn as_points(&self) -> Option<&[[f32; 2]]> {
        match self {
            Self::Points(p) => Some(p),
            Self::Images(_) => None,
        }
    }
}

/// Where data comes from (`--data SPEC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// A built-in 2-D point set.
    Points(points::Toy),
    /// The procedural shapes.
    Shapes,
    /// MNIST IDX files in a folder.
    Mnist(PathBuf),
    /// CIFAR-10 binary batches in a folder.
    Cifar10(PathBuf),
    /// An image folder.
    Folder(PathBuf),
    /// Random images (uniform bytes), `channels × size × size`, 10 labels.
    Synthetic {
        /// Channels.
        channels: usize,
        /// Side.
        size: usize,
    },
}

impl FromStr for DataSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            DataError::InvalidSpec {
            spec: s.to_string(),
            reason: "expected swissroll, moons, 8gaussians, checkerboard, shapes, mnist:DIR, cifar10:DIR or folder:DIR"
                .into(),
        }
        };
        if let Some((kind, path)) = s.split_once(':') {
            if path.is_empty() {
                return Err(DataError::InvalidSpec {
                    spec: s.into(),
                    reason: format!("{kind}: needs a path"),
                });
            }
            return match kind {
                "mnist" => Ok(Self::Mnist(path.into())),
                "cifar10" => Ok(Self::Cifar10(path.into())),
                "folder" => Ok(Self::Folder(path.into())),
                "synthetic" => {
                    let parsed = path
                        .split_once('x')
                        .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s.parse::<usize>().ok()?)));
                    match parsed {
                        Some((c @ (1 | 3), s)) if s > 0 => Ok(Self::Synthetic { channels: c, size: s }),
                        _ => Err(DataError::InvalidSpec {
                            spec: s.into(),
                            reason: "synthetic:CxS needs C = 1 or 3 and S > 0, e.g. synthetic:1x28".into(),
                        }),
                    }
                }
                _ => Err(bad()),
            };
        }
        match s {
            "shapes" => Ok(Self::Shapes),
            other => other.parse().map(Self::Points).map_err(|_| bad()),
        }
    }
}

/// Default number of generated examples for the built-in sets.
pub const GENERATED_LEN: usize = 10_000;

/// Loads (or generates, from `seed`) a dataset; image folders are resized and centre-cropped
/// to `image_size`, the shapes box-filtered to it.
pub fn load(spec: &DataSpec, image_size: usize, seed: u64) -> Result<Data, DataError> {
    match spec {
        DataSpec::Points(toy) => Ok(Data::Points(toy.sample(GENERATED_LEN, seed))),
        DataSpec::Shapes => {
            let set = shapes::generate(GENERATED_LEN, seed);
            if image_size == shapes::SIZE {
                Ok(Data::Images(set))
            } else if image_size > 0 && shapes::SIZE.is_multiple_of(image_size) {
                Ok(Data::Images(set.downsample(shapes::SIZE / image_size)))
            } else {
                Err(DataError::InvalidSpec {
                    spec: "shapes".into(),
                    reason: format!(
                        "shapes are drawn at 32×32 and box-filtered to 16, 8, …; {image_size} does not divide 32"
                    ),
                })
            }
        }
        DataSpec::Mnist(dir) => mnist::load_dir(dir, true).map(Data::Images),
        DataSpec::Cifar10(dir) => cifar::load_dir(dir, true).map(Data::Images),
        DataSpec::Folder(dir) => folder::load(dir, Some(image_size)).map(Data::Images),
        DataSpec::Synthetic { channels, size } => {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let n = GENERATED_LEN / 10;
            let mut pixels = vec![0u8; n * channels * size * size];
            rng.fill(pixels.as_mut_slice());
            Ok(Data::Images(ImageSet {
                pixels,
                labels: (0..n).map(|i| i % 10).collect(),
                channels: *channels,
                size: *size,
                num_classes: 10,
                class_names: Vec::new(),
            }))
        }
    }
}
