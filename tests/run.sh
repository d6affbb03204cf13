#!/usr/bin/env bash
# The project's test command (README): unit tests, host conformance tests and the KVM lab.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
