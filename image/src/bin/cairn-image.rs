//! `cairn-image`: the host tool (build images, inspect slots, validate configs).
fn main() {}
