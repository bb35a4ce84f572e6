//! Writing samples: 8-bit images, PNG grids, and `.npz` batches readable by numpy and by
//! guided-diffusion's evaluator (`arr_0`: uint8 N×H×W×C, `arr_1`: int64 labels).

use std::io::Write;
use std::path::Path;

use burn::tensor::Tensor;

/// 8-bit images, `N × H × W × C` (channels last, as numpy and PNG want them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Pixel bytes.
    pub data: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels (1 or 3).
    pub c: usize,
}

impl Images {
    /// Image `i` alone.
    pub fn one(&self, i: usize) -> Images {
        let len = self.h * self.w * self.c;
        Images { data: self.data[i * len..(i + 1) * len].to_vec(), n: 1, h: self.h, w: self.w, c: self.c }
    }
}

/// Converts samples in [−1, 1] to bytes the reference's way: `((x + 1) · 127.5).clamp(0, 255)`,
/// truncated to `u8` (`.to(torch.uint8)`).
///
/// # Shapes
/// `[N, C, H, W]` → `N × H × W × C` bytes.
pub fn to_images(x: Tensor<4>) -> Images {
    let [n, c, h, w] = x.dims();
    let v: Vec<f32> = x
        .add_scalar(1.0)
        .mul_scalar(127.5)
        .clamp(0.0, 255.0)
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    Images { data: v.into_iter().map(|p| p as u8).collect(), n, h, w, c }
}

/// Tiles the images into a grid with `cols` columns and a 2-pixel border, as one PNG.
pub fn save_grid_png(path: &Path, images: &Images, cols: usize) -> std::io::Result<()> {
    save_grid_png_scaled(path, images, cols, 1)
}

/// Like [`save_grid_png`], each pixel drawn as a `scale × scale` block (nearest neighbour), so
/// that small images can be seen.
pub fn save_grid_png_scaled(path: &Path, images: &Images, cols: usize, scale: usize) -> std::io::Result<()> {
    let s = scale.max(1);
    let cols = cols.clamp(1, images.n.max(1));
    let rows = images.n.div_ceil(cols).max(1);
    let pad = 2;
    let (tw, th) = (images.w * s, images.h * s);
    let (gw, gh) = (cols * (tw + pad) + pad, rows * (th + pad) + pad);
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for k in 0..images.n {
        let (r, cidx) = (k / cols, k % cols);
        let (ox, oy) = (pad + cidx * (tw + pad), pad + r * (th + pad));
        for y in 0..th {
            for x in 0..tw {
                let base = ((k * images.h + y / s) * images.w + x / s) * images.c;
                let px = if images.c >= 3 {
                    [images.data[base], images.data[base + 1], images.data[base + 2]]
                } else {
                    [images.data[base]; 3]
                };
                grid.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb(px));
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    grid.save(path).map_err(std::io::Error::other)
}

/// The `.npy` (format 1.0) encoding of an array.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape_txt =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zip archive of stored (uncompressed) entries — what `numpy.savez` writes.
pub fn zip_stored(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let local = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // version made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u16.to_le_bytes()); // time
            h.extend_from_slice(&0x21u16.to_le_bytes()); // date (1980-01-01)
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra length
            if central {
                h.extend_from_slice(&0u16.to_le_bytes()); // comment
                h.extend_from_slice(&0u16.to_le_bytes()); // disk
                h.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
                h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(local(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(local(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    let cd_len = central.len() as u32;
    out.extend(central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Writes `arr_0` (uint8 N×H×W×C) and, when given, `arr_1` (int64 labels) as a `.npz`.
pub fn save_npz(path: &Path, images: &Images, labels: Option<&[i64]>) -> std::io::Result<()> {
    let mut entries =
        vec![("arr_0.npy", npy("|u1", &[images.n, images.h, images.w, images.c], &images.data))];
    if let Some(l) = labels {
        let bytes: Vec<u8> = l.iter().flat_map(|v| v.to_le_bytes()).collect();
        entries.push(("arr_1.npy", npy("<i8", &[l.len()], &bytes)));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&zip_stored(&entries))?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_the_standard_check_string() {
        // The CRC-32 check value of "123456789" is 0xCBF43926.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let b = npy("|u1", &[2, 3], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        assert_eq!(&b[10 + hlen..], &[0, 1, 2, 3, 4, 5]);
        assert!(std::str::from_utf8(&npy("<i8", &[4], &[0; 32])[10..]).unwrap().contains("(4,)"));
    }
}
