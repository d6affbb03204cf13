#!/usr/bin/env bash
# Software CPU benchmark (issue 3), on this host, no KVM: boots the default guest (`vmr image
# pull`) with `vmr run --accel emu` and with QEMU TCG (`qemu-system-x86_64 -accel tcg -M microvm
# -cpu max`, Debian's QEMU), same kernel, initramfs, command line, memory and vCPUs, alternating,
# RUNS times each. Per run: wall time from spawning the VMM to the guest's init marker. Prints
# medians and the ratio vmr/QEMU, then the loop MIPS. `--jit both` (the default) also boots vmr
# with the translator tier (`VMR_EMU_JIT=1`) in each round; `--jit off` or `--jit on` boots one.
#
#   tests/bench-emu.sh [--vmr target/release/vmr] [--runs 5] [--cpus 1] [--memory 256] [--jit both|on|off]
set -euo pipefail
cd "$(dirname "$0")/.."
VMR=target/release/vmr RUNS=5 CPUS=1 MEM=256 JIT=both TIMEOUT=${VMR_BENCH_TIMEOUT:-600}
while [ $# -gt 0 ]; do
    case "$1" in
        --vmr) VMR=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --cpus) CPUS=$2; shift 2 ;;
        --memory) MEM=$2; shift 2 ;;
        --jit) JIT=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-emu: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$JIT" in both|on|off) ;; *) echo "bench-emu: --jit takes both, on or off" >&2; exit 2 ;; esac
[ -x "$VMR" ] || { echo "bench-emu: $VMR is not an executable vmr (cargo build --release)" >&2; exit 1; }
command -v qemu-system-x86_64 > /dev/null || { echo "bench-emu: qemu-system-x86_64 missing (tests/setup.sh)" >&2; exit 1; }
"$VMR" image pull > /dev/null
IMG=${VMR_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmr/images/default}
KERNEL=$IMG/vmlinux INITRD=$IMG/initramfs.cpio.gz
# Both get a preset lpj (no delay-loop calibration). QEMU also gets the host TSC rate: TCG runs
# the TSC at the host's rate and about one boot in two cannot calibrate it against the PIT and
# hangs (docs/LAB.md); vmr's software CPU advertises its TSC rate in CPUID instead.
. tests/lab/common.sh
CMDLINE="$(sed -n 's/^ *"cmdline": "\(.*\)",*$/\1/p' "$IMG/manifest.json") lpj=10384468"
MARKER="vmr-guest: init reached"
OUT=$(mktemp -d /tmp/vmr-bench-emu.XXXXXX)

# one_run NAME N CMD...: prints the ms from spawn to the marker (or "timeout").
one_run() {
    local name=$1 n=$2; shift 2
    local log=$OUT/$name.$n.log fifo=$OUT/fifo t0 pid dog line ms=timeout
    rm -f "$fifo"; mkfifo "$fifo"
    t0=$(date +%s%N)
    "$@" < /dev/null > "$fifo" 2>&1 &
    pid=$!
    ( sleep "$TIMEOUT"; kill -9 "$pid" ) > /dev/null 2>&1 &
    dog=$!
    while IFS= read -r line; do
        printf '%s\n' "$line" >> "$log"
        case "$line" in *"$MARKER"*) ms=$(( ($(date +%s%N) - t0) / 1000000 )); break ;; esac
    done < "$fifo"
    kill -9 "$pid" "$dog" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$ms"
}
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

vmr_cmd=("$VMR" run --accel emu --cpus "$CPUS" --memory "${MEM}M" --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$CMDLINE")
qemu_cmd=(qemu-system-x86_64 -accel tcg -M microvm -cpu max -smp "$CPUS" -m "${MEM}M" -nodefaults
    -no-user-config -display none -serial stdio -no-reboot -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE tsc_early_khz=$(host_tsc_khz)")
: > "$OUT/vmr.ms"; : > "$OUT/jit.ms"; : > "$OUT/qemu.ms"
for n in $(seq 1 "$RUNS"); do
    v=-; j=-
    [ "$JIT" != on ] && v=$(one_run vmr "$n" env VMR_EMU_JIT=0 "${vmr_cmd[@]}")
    [ "$JIT" != off ] && j=$(one_run jit "$n" env VMR_EMU_JIT=1 "${vmr_cmd[@]}")
    q=$(one_run qemu "$n" "${qemu_cmd[@]}")
    echo "run $n: vmr-emu ${v} ms, vmr-emu jit ${j} ms, qemu-tcg ${q} ms" >&2
    case "$v" in -|timeout) ;; *) echo "$v" >> "$OUT/vmr.ms" ;; esac
    case "$j" in -|timeout) ;; *) echo "$j" >> "$OUT/jit.ms" ;; esac
    [ "$q" != timeout ] && echo "$q" >> "$OUT/qemu.ms"
done
vm=$(median < "$OUT/vmr.ms"); jm=$(median < "$OUT/jit.ms"); qm=$(median < "$OUT/qemu.ms")
echo "time to init marker, median of $RUNS ($CPUS vCPU, $MEM MiB): vmr --accel emu ${vm} ms, with VMR_EMU_JIT=1 ${jm} ms, QEMU TCG ${qm} ms"
for x in "interpreter:$vm" "jit:$jm"; do
    if [ "${x#*:}" != - ] && [ "$qm" != - ]; then
        awk -v n="${x%%:*}" -v v="${x#*:}" -v q="$qm" 'BEGIN { printf "ratio vmr (%s)/QEMU: %.2fx\n", n, v / q }'
    fi
done
for j in 0 1; do
    VMR_EMU_JIT=$j cargo run --release -q -p vmr-emu --example mips 2>/dev/null | sed "s/^/loop microbenchmark (VMR_EMU_JIT=$j): /" || true
done
echo "logs in $OUT"
