#!/usr/bin/env bash
# The project's test command (README): installs the test packages if missing (as root), then
# runs unit tests, host conformance tests (tiny guests on /dev/kvm and the software CPU), the
# nested KVM lab scenarios (real Linux guests, tests/lab.rs), and the conformance tests again
# under real KVM inside the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
# The default guest (Debian kernel + busybox initramfs) first: the loader's tests load its
# vmlinux and bzImage byte for byte (VMR_TEST_KERNEL_DIR), the emu tests boot it.
cargo build --release
target/release/vmr image pull > /dev/null
export VMR_TEST_KERNEL_DIR=${VMR_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmr/images/default}
cargo test --release --workspace
crates/conformance/run-in-lab.sh
