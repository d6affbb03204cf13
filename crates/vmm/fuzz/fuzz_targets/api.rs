//! cargo-fuzz target: see vmr_vmm::api::fuzzing::request for how the input is decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmr_vmm::api::fuzzing::request(data));
