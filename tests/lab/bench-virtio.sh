#!/usr/bin/env bash
# Virtio I/O benchmark in one lab boot (tests/lab/bench-virtio-l1.sh): fio in the guest on the
# same raw image and iperf3 over the same tap, vmr vs QEMU microvm (3 boots each, alternating),
# plus the same fio on the image file in L1; medians and ratios. Lab figures are TCG-inflated:
# only the ratios carry over.
#
#   tests/lab/bench-virtio.sh [--vmr target/release/vmr] [--runs 3] [--out DIR]
set -euo pipefail
exec "$(dirname "$0")/run.sh" --bench-virtio "$@"
