//! `diffusion invert` and `interpolate` on a freshly initialised UNet: its output convolution is
//! zero, so ε̂ = 0 exactly and the DDIM chain is x_t ∝ √ᾱ_t x_0 — inversion must reconstruct the
//! images to float precision, whatever the step count.

use crate::{fails, ok};

#[test]
fn inversion_round_trips_and_interpolation_writes_a_strip() {
    let d = std::env::temp_dir().join(format!("diffusion-latent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let ckpt = d.join("tiny.ckpt");
    ok(&["model", "--preset", "tiny", "--save", ckpt.to_str().unwrap()]);
    let c = ckpt.to_str().unwrap();
    let inv = d.join("inv.png");
    let out = ok(&[
        "invert",
        "--checkpoint",
        c,
        "--respace",
        "ddim10",
        "--num",
        "3",
        "--out",
        inv.to_str().unwrap(),
    ]);
    let mse: f64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(mse < 1e-6, "reconstruction MSE {mse}");
    let strip = d.join("strip.png");
    ok(&[
        "interpolate",
        "--checkpoint",
        c,
        "--respace",
        "ddim5",
        "--frames",
        "6",
        "--out",
        strip.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&strip).unwrap();
    // Six 32x32 frames in one row with 2-pixel borders.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 6 * 34 + 2);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 34 + 2);
    let err = fails(&[
        "interpolate",
        "--checkpoint",
        c,
        "--data",
        "shapes",
        "--images",
        "0",
        "99999",
        "--out",
        strip.to_str().unwrap(),
    ]);
    assert!(err.contains("out of range"), "{err}");
    assert!(
        fails(&["interpolate", "--checkpoint", c, "--frames", "1", "--out", strip.to_str().unwrap()])
            .contains("at least 2")
    );
    std::fs::remove_dir_all(&d).ok();
}
