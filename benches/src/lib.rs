//! Criterion benchmarks of diffusion-rs live in `benches/`; run them with `cargo xtask bench`.
