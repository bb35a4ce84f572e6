//! Block-level checks with expected values derived by hand from the definitions.
