# Shared settings of the lab scripts (sourced, not run).
# shellcheck shell=bash
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_CACHE=${VMR_LAB_CACHE:-$HOME/.cache/vmr/lab}
# TCG runs at the host TSC rate; the L1 (and L2) kernels cannot calibrate it reliably against
# the PIT under TCG (1 boot in 2 hangs with all timestamps at 0), and ~7% of boots hang in
# calibrate_delay without a preset lpj. Both values are given on the command line.
host_tsc_khz() {
    local mhz
    mhz=$(awk -F: '/^cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
    awk -v m="${mhz:-2445.4}" 'BEGIN { printf "%d\n", m * 1000 }'
}
LAB_TIMING_ARGS="lpj=10384468 tsc_early_khz=$(host_tsc_khz)"
# L2_TOOLS: host binaries in every L2 initramfs (socat: vsock both ways); L2_BENCH_TOOLS only
# in the benchmark's (fio and its ~80 MB of libraries would slow every scenario boot).
L2_TOOLS="socat"
L2_BENCH_TOOLS="fio iperf3"
# l2_initramfs NAME TOOLS...: where the cached L2 initramfs built from this tree's guest/init,
# busybox, the modules and TOOLS lives. Named by a hash of its inputs: lab runs from different
# work trees share the cache and must never boot each other's guest /init.
l2_initramfs() {
    local name=$1 key; shift
    key=$({ cat "$LAB_DIR/guest/init" /bin/busybox "$LAB_CACHE/generic/l2-modules/order"; echo "$*"; } |
        sha256sum | cut -c1-16)
    echo "$LAB_CACHE/$name.$key.cpio.gz"
}
log() { echo "lab: $*" >&2; }
die() { echo "lab: error: $*" >&2; exit 1; }
