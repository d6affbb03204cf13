//! Random instruction bytes on random page tables: the software CPU may only raise guest
//! exceptions, halt or shut down; it must never panic or hang the VMM.
//!
//! The input format and the harness are in `tests/common/fuzz_cpu.rs` (shared with the tests
//! that run the seeds in `seeds/cpu`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
mod common;

use common::fuzz_cpu::{run, world, World};
use std::cell::RefCell;

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.get_or_insert_with(world);
        run(w, data);
    });
});
