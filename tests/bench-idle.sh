#!/usr/bin/env bash
# Idle cost (issue 8): N default guests idling at their shell, each a `vmr run --accel emu`
# with its API socket served, side by side with N QEMU TCG guests (Debian's QEMU, `-M microvm`)
# booted from the same kernel, initramfs and command line. After every guest reached its init
# marker and SETTLE seconds passed, each VMM process's CPU time (all threads, /proc/PID/stat
# utime+stime) is measured over WINDOW seconds. Prints, per VMM, the median and largest share
# of one host core per guest.
#
#   tests/bench-idle.sh [--vmr target/release/vmr] [--guests 10] [--memory 128] [--window 30]
set -euo pipefail
cd "$(dirname "$0")/.."
VMR=target/release/vmr N=10 MEM=128 WINDOW=30 SETTLE=10 BOOT_TIMEOUT=${VMR_BENCH_TIMEOUT:-900}
while [ $# -gt 0 ]; do
    case "$1" in
        --vmr) VMR=$2; shift 2 ;;
        --guests) N=$2; shift 2 ;;
        --memory) MEM=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --settle) SETTLE=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-idle: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$VMR" ] || { echo "bench-idle: $VMR is not an executable vmr (cargo build --release)" >&2; exit 1; }
command -v qemu-system-x86_64 > /dev/null || { echo "bench-idle: qemu-system-x86_64 missing (tests/setup.sh)" >&2; exit 1; }
"$VMR" image pull > /dev/null
IMG=${VMR_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmr/images/default}
KERNEL=$IMG/vmlinux INITRD=$IMG/initramfs.cpio.gz
. tests/lab/common.sh
CMDLINE="$(sed -n 's/^ *"cmdline": "\(.*\)",*$/\1/p' "$IMG/manifest.json") lpj=10384468"
MARKER="vmr-guest: init reached"
OUT=$(mktemp -d /tmp/vmr-bench-idle.XXXXXX)
PIDS=()
cleanup() { kill -9 "${PIDS[@]}" 2>/dev/null || true; pkill -P $$ sleep 2>/dev/null || true; }
trap cleanup EXIT

# start NAME CMD...: the VMM with a stdin that stays open (the guest's shell waits on it).
start() {
    local name=$1; shift
    sleep 100000 | "$@" > "$OUT/$name.log" 2>&1 &
    PIDS+=($!)
}
for i in $(seq 1 "$N"); do
    start "vmr.$i" "$VMR" run --accel emu --memory "${MEM}M" --kernel "$KERNEL" --initrd "$INITRD" \
        --cmdline "$CMDLINE" --api-sock "$OUT/vmr.$i.sock"
    start "qemu.$i" qemu-system-x86_64 -accel tcg -M microvm -cpu max -m "${MEM}M" -nodefaults \
        -no-user-config -display none -serial stdio -no-reboot -kernel "$KERNEL" -initrd "$INITRD" \
        -append "$CMDLINE tsc_early_khz=$(host_tsc_khz)"
done
echo "bench-idle: booting $N vmr and $N QEMU TCG guests (${MEM} MiB each) ..." >&2
t0=$(date +%s)
for f in "$OUT"/vmr.*.log "$OUT"/qemu.*.log; do
    while ! grep -q "$MARKER" "$f"; do
        [ $(($(date +%s) - t0)) -lt "$BOOT_TIMEOUT" ] || { echo "bench-idle: $f never reached init" >&2; exit 1; }
        sleep 1
    done
done
echo "bench-idle: all at their shell after $(($(date +%s) - t0)) s; settling ${SETTLE} s, measuring ${WINDOW} s" >&2
sleep "$SETTLE"
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A before
for p in "${PIDS[@]}"; do before[$p]=$(ticks "$p"); done
sleep "$WINDOW"
hz=$(getconf CLK_TCK)
: > "$OUT/vmr.pct"; : > "$OUT/qemu.pct"
for i in "${!PIDS[@]}"; do
    p=${PIDS[$i]}
    kind=$([ $((i % 2)) = 0 ] && echo vmr || echo qemu)
    awk -v d=$(($(ticks "$p") - before[$p])) -v hz="$hz" -v w="$WINDOW" 'BEGIN { printf "%.2f\n", 100 * d / hz / w }' >> "$OUT/$kind.pct"
done
for kind in vmr qemu; do
    sort -n "$OUT/$kind.pct" | awk -v k="$kind" -v n="$N" '{ a[NR] = $1 } END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "%-5s %2d idle guests: median %.2f%% of a core each, largest %.2f%%\n", k, n, m, a[NR] }'
done
echo "bench-idle: logs in $OUT" >&2
