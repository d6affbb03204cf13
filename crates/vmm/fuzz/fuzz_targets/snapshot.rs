//! cargo-fuzz target: see vmr_vmm::snapshot::fuzzing::state.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmr_vmm::snapshot::fuzzing::state(data));
