//! CIFAR-10 in its binary format: records of 1 label byte and 3 × 32 × 32 pixel bytes (R, G, B
//! planes), in `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`.

use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

const RECORD: usize = 1 + 3 * 32 * 32;
/// CIFAR-10's class names, by label.
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Parses one batch file's bytes, appending to `set`.
pub fn parse_batch(bytes: &[u8], path: &Path, set: &mut ImageSet) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::invalid(
            path,
            format!(
                "size {} bytes is not a positive multiple of {RECORD} (1 label + 3×32×32 pixels)",
                bytes.len()
            ),
        ));
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(DataError::invalid(
                path,
                format!("label {} of record {i} is out of range 0..10", rec[0]),
            ));
        }
        set.labels.push(usize::from(rec[0]));
        set.pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Loads the training (5 batches) or test split from `dir` or `dir/cifar-10-batches-bin`.
pub fn load_dir(dir: &Path, train: bool) -> Result<ImageSet, DataError> {
    let base: PathBuf =
        if dir.join("cifar-10-batches-bin").is_dir() { dir.join("cifar-10-batches-bin") } else { dir.into() };
    let files: Vec<PathBuf> = if train {
        (1..=5).map(|i| base.join(format!("data_batch_{i}.bin"))).collect()
    } else {
        vec![base.join("test_batch.bin")]
    };
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        size: 32,
        num_classes: 10,
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    for f in files {
        if !f.is_file() {
            return Err(DataError::Missing { path: f, what: "a CIFAR-10 binary batch".into() });
        }
        let bytes = std::fs::read(&f).map_err(DataError::io(&f))?;
        parse_batch(&bytes, &f, &mut set)?;
    }
    Ok(set)
}
