#!/usr/bin/env bash
# Boot-time and memory benchmark in one lab boot: the same Debian vmlinux + lab initramfs
# (1 vCPU, 256 MiB) booted 5 times each with vmr (if --vmr is given) and QEMU microvm, medians
# and vmr/qemu ratios. Lab times are TCG-inflated: only the ratios carry over.
#
#   tests/lab/bench.sh [--vmr target/release/vmr] [--runs 5] [--out DIR]
set -euo pipefail
exec "$(dirname "$0")/run.sh" --bench "$@"
