#!/usr/bin/env bash
# The project's test command (README): installs the test packages if missing (as root), then
# runs unit tests, host conformance tests (tiny guests on /dev/kvm and the software CPU), the
# nested KVM lab scenarios (real Linux guests, tests/lab.rs), and the conformance tests again
# under real KVM inside the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo test --release --workspace
crates/conformance/run-in-lab.sh
