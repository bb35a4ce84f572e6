//! Image folders: PNG/JPEG files, labelled by sub-folder (`root/cat/001.png`) or, for files
//! directly in the root, by the file-name prefix before the first `_` (`cat_001.png`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::{DataError, ImageSet};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(DataError::io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(DataError::io(dir)))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// Resizes the shorter side to `size` and centre-crops to `size × size`.
fn resize_crop(img: image::RgbImage, size: usize) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let s = size as u32;
    let scale = f64::from(s) / f64::from(w.min(h));
    let (nw, nh) =
        (((f64::from(w) * scale).round() as u32).max(s), ((f64::from(h) * scale).round() as u32).max(s));
    let resized =
        if (nw, nh) == (w, h) { img } else { image::imageops::resize(&img, nw, nh, FilterType::CatmullRom) };
    image::imageops::crop_imm(&resized, (nw - s) / 2, (nh - s) / 2, s, s).to_image()
}

/// Loads every image under `root` as RGB. With `size`, each is resized (shorter side) and
/// centre-cropped to `size × size`; without, all images must be square and of one size.
pub fn load(root: &Path, size: Option<usize>) -> Result<ImageSet, DataError> {
    if !root.is_dir() {
        return Err(DataError::Missing { path: root.into(), what: "an image folder".into() });
    }
    // (label name, file) pairs.
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in sorted_entries(root)? {
        if entry.is_dir() {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for f in sorted_entries(&entry)?.into_iter().filter(|f| f.is_file() && is_image(f)) {
                files.push((name.clone(), f));
            }
        } else if is_image(&entry) {
            let stem = entry.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let label = stem.split_once('_').map(|(l, _)| l.to_string()).unwrap_or_default();
            files.push((label, entry));
        }
    }
    if files.is_empty() {
        return Err(DataError::Empty { path: root.into() });
    }
    let names: BTreeMap<String, usize> = {
        let mut set: Vec<String> = files.iter().map(|(l, _)| l.clone()).collect();
        set.sort();
        set.dedup();
        set.into_iter().enumerate().map(|(i, n)| (n, i)).collect()
    };
    let mut out = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        size: size.unwrap_or(0),
        num_classes: names.len(),
        class_names: names.keys().cloned().collect(),
    };
    let mut first: Option<(PathBuf, u32, u32)> = None;
    for (label, path) in &files {
        let img = image::open(path)
            .map_err(|e| DataError::invalid(path, format!("cannot decode image: {e}")))?
            .to_rgb8();
        let img = match size {
            Some(s) => resize_crop(img, s),
            None => {
                let (w, h) = img.dimensions();
                match &first {
                    None => {
                        if w != h {
                            return Err(DataError::invalid(
                                path,
                                format!("image is {w}×{h}; square images are expected"),
                            ));
                        }
                        first = Some((path.clone(), w, h));
                        out.size = w as usize;
                    }
                    Some((p0, w0, h0)) if (w, h) != (*w0, *h0) => {
                        return Err(DataError::invalid(
                            path,
                            format!("mixed sizes: this image is {w}×{h} but {} is {w0}×{h0}", p0.display()),
                        ));
                    }
                    Some(_) => {}
                }
                img
            }
        };
        // HWC (image crate) → CHW.
        let s = out.size;
        let raw = img.into_raw();
        for c in 0..3 {
            out.pixels.extend((0..s * s).map(|p| raw[p * 3 + c]));
        }
        out.labels.push(names[label]);
    }
    Ok(out)
}
