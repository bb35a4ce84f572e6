//! diffusion-train's datasets: every loader on small files written here, and
//! every bad-data case of issue 4 (missing file, wrong magic number, mixed sizes, empty folder,
//! label out of range, truncation) giving one error that names the file and the problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use diffusion_train::data::{DataSpec, cifar, folder, load, mnist};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diffusion-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[track_caller]
fn err_contains<T: std::fmt::Debug>(r: Result<T, diffusion_train::data::DataError>, parts: &[&str]) {
    let e = r.unwrap_err().to_string();
    for p in parts {
        assert!(e.contains(p), "error {e:?} should contain {p:?}");
    }
}

#[test]
fn mnist_idx_raw_and_gzip() {
    let d = tmpdir("mnist");
    let pixels: Vec<u8> = (0..3 * 4 * 4).map(|v| v as u8).collect();
    std::fs::write(d.join("train-images-idx3-ubyte"), idx(&[3, 4, 4], &pixels)).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte.gz"), gz(&idx(&[3], &[7, 0, 9]))).unwrap();
    let set = mnist::load_dir(&d, true).unwrap();
    assert_eq!((set.len(), set.channels, set.size, set.num_classes), (3, 1, 4, 10));
    assert_eq!(set.labels, vec![7, 0, 9]);
    assert_eq!(set.image(1), &pixels[16..32]);
    // Scaling to [-1, 1]: byte 0 -> -1, 255 -> 1; flipping mirrors each row.
    let f = set.image_f32(0, false);
    assert_eq!(f[0], -1.0);
    assert_eq!(set.image_f32(0, true)[0], f[3]);

    let images = d.join("train-images-idx3-ubyte");
    let labels = d.join("train-labels-idx1-ubyte.gz");
    // Wrong magic number (a label file given as images).
    std::fs::write(&images, idx(&[3], &[1, 2, 3])).unwrap();
    err_contains(mnist::load_dir(&d, true), &["train-images-idx3-ubyte", "wrong magic number 0x00000801"]);
    // Truncated pixels.
    std::fs::write(&images, idx(&[3, 4, 4], &pixels[..40])).unwrap();
    err_contains(
        mnist::load_dir(&d, true),
        &["train-images-idx3-ubyte", "truncated", "need 48 bytes, found 40"],
    );
    // Label out of range.
    std::fs::write(&images, idx(&[3, 4, 4], &pixels)).unwrap();
    std::fs::write(&labels, gz(&idx(&[3], &[1, 12, 3]))).unwrap();
    err_contains(
        mnist::load_dir(&d, true),
        &["train-labels-idx1-ubyte.gz", "label 12 at index 1 is out of range"],
    );
    // Counts that disagree.
    std::fs::write(&labels, gz(&idx(&[2], &[1, 2]))).unwrap();
    err_contains(mnist::load_dir(&d, true), &["2 labels for 3 images"]);
    // Corrupt gzip.
    std::fs::write(&labels, [0x1f, 0x8b, 1, 2, 3]).unwrap();
    err_contains(mnist::load_dir(&d, true), &["corrupt gzip"]);
    // Missing test split.
    err_contains(mnist::load_dir(&d, false), &["t10k-images-idx3-ubyte", "missing"]);
    std::fs::remove_dir_all(&d).ok();
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

#[test]
fn cifar10_binary_batches() {
    let d = tmpdir("cifar").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&d).unwrap();
    for i in 1..=5u8 {
        let mut b = cifar_record(i, i * 10);
        b.extend(cifar_record(0, 255));
        std::fs::write(d.join(format!("data_batch_{i}.bin")), b).unwrap();
    }
    let set = cifar::load_dir(d.parent().unwrap(), true).unwrap();
    assert_eq!((set.len(), set.channels, set.size), (10, 3, 32));
    assert_eq!(set.labels[..4], [1, 0, 2, 0]);
    assert_eq!(set.image(2)[0], 20);
    assert_eq!(set.class_names[1], "automobile");
    // Wrong size.
    std::fs::write(d.join("data_batch_3.bin"), vec![0u8; 3000]).unwrap();
    err_contains(cifar::load_dir(&d, true), &["data_batch_3.bin", "not a positive multiple of 3073"]);
    // Label out of range.
    std::fs::write(d.join("data_batch_3.bin"), cifar_record(10, 0)).unwrap();
    err_contains(cifar::load_dir(&d, true), &["data_batch_3.bin", "label 10 of record 0"]);
    // Missing batch.
    err_contains(cifar::load_dir(&d, false), &["test_batch.bin", "missing"]);
    std::fs::remove_dir_all(d.parent().unwrap()).ok();
}

fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

#[test]
fn image_folders_by_subfolder_and_prefix() {
    let d = tmpdir("folder");
    std::fs::create_dir_all(d.join("cats")).unwrap();
    std::fs::create_dir_all(d.join("dogs")).unwrap();
    png(&d.join("cats/a.png"), 16, 16, [255, 0, 0]);
    png(&d.join("dogs/b.png"), 16, 24, [0, 0, 255]);
    std::fs::write(d.join("dogs/readme.txt"), "not an image").unwrap();
    // Resized (shorter side) and centre-cropped.
    let set = folder::load(&d, Some(8)).unwrap();
    assert_eq!((set.len(), set.size, set.num_classes), (2, 8, 2));
    assert_eq!(set.class_names, vec!["cats", "dogs"]);
    assert_eq!(set.labels, vec![0, 1]);
    assert_eq!(&set.image(0)[..2], &[255, 255], "red plane of the red cat");
    assert_eq!(set.image(1)[2 * 64], 255, "blue plane of the blue dog");
    // Without resizing, mixed sizes are an error naming both files.
    err_contains(folder::load(&d, None), &["b.png", "mixed sizes", "16×24", "a.png"]);
    // Prefix labels.
    let p = tmpdir("prefix");
    png(&p.join("zebra_1.png"), 4, 4, [1, 2, 3]);
    png(&p.join("ant_1.png"), 4, 4, [1, 2, 3]);
    png(&p.join("zebra_2.png"), 4, 4, [1, 2, 3]);
    let set = folder::load(&p, None).unwrap();
    assert_eq!(set.class_names, vec!["ant", "zebra"]);
    assert_eq!(set.labels, vec![0, 1, 1]);
    // A corrupt image, and an empty folder.
    std::fs::write(p.join("zebra_3.png"), b"garbage").unwrap();
    err_contains(folder::load(&p, None), &["zebra_3.png", "cannot decode"]);
    let e = tmpdir("empty");
    err_contains(folder::load(&e, None), &["no images found"]);
    err_contains(folder::load(&e.join("nope"), None), &["nope", "missing"]);
    for dir in [d, p, e] {
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn specs_parse_and_built_in_sets_load() {
    assert_eq!("mnist:/data/mnist".parse::<DataSpec>().unwrap(), DataSpec::Mnist("/data/mnist".into()));
    assert!(matches!("swissroll".parse::<DataSpec>().unwrap(), DataSpec::Points(_)));
    err_contains("mnist:".parse::<DataSpec>(), &["needs a path"]);
    err_contains("imagenet".parse::<DataSpec>(), &["invalid data spec \"imagenet\""]);
    let shapes = load(&DataSpec::Shapes, 32, 1).unwrap();
    assert_eq!(shapes.as_images().unwrap().len(), diffusion_train::data::GENERATED_LEN);
    let roll = load(&"swissroll".parse().unwrap(), 32, 1).unwrap();
    assert_eq!(roll.as_points().unwrap().len(), diffusion_train::data::GENERATED_LEN);
}
