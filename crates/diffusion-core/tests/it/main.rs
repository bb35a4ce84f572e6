//! Integration tests of diffusion-core: one binary, so burn is linked once.
//!
//! - `reference`: golden values produced by openai/improved-diffusion@1bc7bbb itself
//!   (`tools/gen_reference.py` wrote `reference.json`; see that script for how).
//! - `properties`: proptest properties that follow from the definitions.
//! - `gradients`: autodiff checks (the hybrid loss's stop-gradient).

mod common;
mod diffusers;
mod gradients;
mod properties;
mod reference;
mod zero_snr;
