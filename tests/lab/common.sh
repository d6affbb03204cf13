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
log() { echo "lab: $*" >&2; }
die() { echo "lab: error: $*" >&2; exit 1; }
