//! MNIST in its IDX format (LeCun et al.), raw or gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

/// Reads a file, gunzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(DataError::io(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::invalid(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes with `ndims` dimensions: returns the dimensions and the data.
pub fn parse_idx(bytes: &[u8], ndims: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::invalid(path, "too short for an IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || usize::from(bytes[3]) != ndims {
        return Err(DataError::invalid(
            path,
            format!(
                "wrong magic number 0x{:02x}{:02x}{:02x}{:02x}: expected 0x000008{ndims:02x} (IDX, unsigned bytes, {ndims} dimensions)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::invalid(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    let found = bytes.len() - header;
    if found < expected {
        return Err(DataError::invalid(
            path,
            format!("truncated: dimensions {dims:?} need {expected} bytes, found {found}"),
        ));
    }
    if found > expected {
        return Err(DataError::invalid(
            path,
            format!("{} unexpected bytes after the data", found - expected),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stems: &[&str]) -> Option<PathBuf> {
    stems.iter().flat_map(|s| [dir.join(s), dir.join(format!("{s}.gz"))]).find(|p| p.is_file())
}

/// Loads an IDX image file and its label file (10 classes).
pub fn load_files(images: &Path, labels: &Path) -> Result<ImageSet, DataError> {
    let (idims, pixels) = parse_idx(&read_maybe_gz(images)?, 3, images)?;
    let (ldims, label_bytes) = parse_idx(&read_maybe_gz(labels)?, 1, labels)?;
    let (n, h, w) = (idims[0], idims[1], idims[2]);
    if h != w {
        return Err(DataError::invalid(images, format!("images are {h}×{w}; square images are expected")));
    }
    if ldims[0] != n {
        return Err(DataError::invalid(
            labels,
            format!("{} labels for {n} images in {}", ldims[0], images.display()),
        ));
    }
    if let Some(i) = label_bytes.iter().position(|&l| l >= 10) {
        return Err(DataError::invalid(
            labels,
            format!("label {} at index {i} is out of range 0..10", label_bytes[i]),
        ));
    }
    Ok(ImageSet {
        pixels,
        labels: label_bytes.into_iter().map(usize::from).collect(),
        channels: 1,
        size: h,
        num_classes: 10,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    })
}

/// Loads the training (`train = true`) or test split from a folder holding the standard file names
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-…`, optionally `.gz`).
pub fn load_dir(dir: &Path, train: bool) -> Result<ImageSet, DataError> {
    let prefix = if train { "train" } else { "t10k" };
    let images_name = format!("{prefix}-images-idx3-ubyte");
    let labels_name = format!("{prefix}-labels-idx1-ubyte");
    let images = find(dir, &[&images_name, &format!("{prefix}-images.idx3-ubyte")]).ok_or_else(|| {
        DataError::Missing { path: dir.join(&images_name), what: "MNIST images (raw or .gz)".into() }
    })?;
    let labels = find(dir, &[&labels_name, &format!("{prefix}-labels.idx1-ubyte")]).ok_or_else(|| {
        DataError::Missing { path: dir.join(&labels_name), what: "MNIST labels (raw or .gz)".into() }
    })?;
    load_files(&images, &labels)
}
