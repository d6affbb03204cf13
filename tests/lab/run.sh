#!/usr/bin/env bash
# Runs the vmr lab: boots an L1 Linux under QEMU TCG (-cpu max emulates AMD SVM), loads kvm_amd
# there and runs every scenario of tests/lab/scenarios against real KVM, with vmr (or QEMU, to
# validate the harness) as the L2 VMM. One line per scenario: "LAB <name> PASS|FAIL|SKIP <detail>",
# streamed to stderr as L1 prints it and listed again on stdout at the end, then
# "N passed, N failed, N skipped". Exit status 1 if any scenario failed.
#
#   tests/lab/run.sh --vmr target/release/vmr [--out DIR] [--only "boot-vmlinux cpus-2"]
#                    [--repeat N] [--shards K]
#   tests/lab/run.sh --vmm qemu [--out DIR]
set -euo pipefail
. "$(dirname "$0")/common.sh"

VMR_BIN="" VMM="" OUT="" ONLY="" MODE=scenarios BENCH=bench-l1.sh
L1_TIMEOUT=${VMR_LAB_L1_TIMEOUT:-1500}     # whole L1 boot, seconds
TOTAL_TIMEOUT=${VMR_LAB_TOTAL_TIMEOUT:-2700} # all L1 boots of this run (retries included)
SCENARIO_TIMEOUT=${VMR_LAB_SCENARIO_TIMEOUT:-240}
BOOT_TIMEOUT=${VMR_LAB_BOOT_TIMEOUT:-180}  # one L2 boot inside L1
L1_CPUS=${VMR_LAB_L1_CPUS:-1}
# QEMU's accelerator for L1. Multi-threaded TCG (the default) can wedge an L1 that runs nested
# KVM guests (the watchdog below retries); single-threaded TCG does not wedge, but in it an L2 Linux
# boot stalled after a few seconds of guest time (docs/LAB.md).
L1_ACCEL=${VMR_LAB_L1_ACCEL:-tcg}
L1_MEM=${VMR_LAB_L1_MEM:-6144}
BENCH_RUNS=5
REPEAT=1
# L1 machines booted side by side, each running a share of the scenarios.
SHARDS=${VMR_LAB_SHARDS:-2}

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --vmr) VMR_BIN=$2; shift 2 ;;
        --vmm) VMM=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --bench) MODE=bench; shift ;;
        --bench-virtio) MODE=bench; BENCH=bench-virtio-l1.sh; BENCH_RUNS=3; shift ;;
        --runs) BENCH_RUNS=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ -z "$VMM" ] && VMM=$([ -n "$VMR_BIN" ] && echo vmr || echo qemu)
case "$VMM" in
    vmr) [ -x "$VMR_BIN" ] || die "--vmr PATH (an executable vmr binary) is required for --vmm vmr" ;;
    qemu) ;;
    *) die "--vmm must be vmr or qemu" ;;
esac
OUT=${OUT:-$(mktemp -d /tmp/vmr-lab.XXXXXX)}
mkdir -p "$OUT"

"$LAB_DIR/prepare.sh"

# copy_bin SRC DEST_IN_ROOT: the binary plus every shared library ldd names, at their paths.
copy_bin() {
    local src=$1 dest=$2 lib
    install -D -m 755 "$src" "$ROOT/$dest"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*'); do
        [ -e "$ROOT$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$ROOT$lib"
    done
}

build_l1_initramfs() {
    ROOT=$OUT/l1-root
    rm -rf "$ROOT"; mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,lab/l2,lab/kvm,usr/share}
    cp /bin/busybox "$ROOT/bin/busybox"; ln -s busybox "$ROOT/bin/sh"
    install -m 755 "$LAB_DIR/l1/init" "$ROOT/init"
    cp "$LAB_DIR/l1/lib.sh" "$ROOT/lab/"
    # The benchmark L1 runs (l1/init starts /lab/bench-l1.sh): boot time, or virtio I/O with
    # fio/iperf3 in L1 and in a larger L2 initramfs.
    cp "$LAB_DIR/$BENCH" "$ROOT/lab/bench-l1.sh"
    if [ "$BENCH" = bench-virtio-l1.sh ]; then
        cp "$(l2_initramfs l2-bench-initramfs $L2_TOOLS $L2_BENCH_TOOLS)" "$ROOT/lab/l2/bench-initramfs.cpio.gz"
        for t in fio iperf3; do copy_bin "$(command -v $t)" usr/bin/$t; done
    fi
    cp -r "$LAB_DIR/scenarios" "$ROOT/lab/scenarios"
    cp "$LAB_CACHE"/generic/modules/*.ko "$ROOT/lab/kvm/"
    cp "$LAB_CACHE/generic/vmlinux" "$ROOT/lab/l2/generic-vmlinux"
    cp "$LAB_CACHE/generic/bzImage" "$ROOT/lab/l2/generic-bzImage"
    cp "$LAB_CACHE/cloud/bzImage" "$ROOT/lab/l2/cloud-bzImage"
    cp "$(l2_initramfs l2-initramfs $L2_TOOLS)" "$ROOT/lab/l2/initramfs.cpio.gz"
    local img=${VMR_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmr/images/default}
    if [ -s "$img/bzImage" ] && [ -s "$img/initramfs.cpio.gz" ] && [ -s "$img/manifest.json" ]; then
        cp "$img/bzImage" "$ROOT/lab/l2/image-bzImage"
        cp "$img/initramfs.cpio.gz" "$ROOT/lab/l2/image-initramfs.cpio.gz"
        sed -n 's/^ *"cmdline": "\(.*\)",*$/\1/p' "$img/manifest.json" > "$ROOT/lab/l2/image-cmdline"
    fi
    # QEMU goes in whatever the mode: the benchmark and --vmm qemu need it.
    copy_bin "$(command -v qemu-system-x86_64)" usr/bin/qemu-system-x86_64
    cp -rL /usr/share/qemu "$ROOT/usr/share/qemu"
    [ -d /usr/share/seabios ] && cp -r /usr/share/seabios "$ROOT/usr/share/seabios"
    [ -n "$VMR_BIN" ] && copy_bin "$VMR_BIN" lab/vmr
    # Host-side disk tools for the virtio-blk scenarios (make and check images inside L1).
    for t in qemu-img mke2fs debugfs socat; do copy_bin "$(command -v $t)" usr/bin/$t; done
    ln -sf mke2fs "$ROOT/usr/bin/mkfs.ext4"
    install -D -m 644 /etc/mke2fs.conf "$ROOT/etc/mke2fs.conf"
    cat > "$ROOT/lab/config" <<CFG
LAB_MODE=$MODE
LAB_VMM=$VMM
LAB_TIMING_ARGS="$LAB_TIMING_ARGS"
LAB_SCENARIO_TIMEOUT=$SCENARIO_TIMEOUT
LAB_BOOT_TIMEOUT=$BOOT_TIMEOUT
LAB_BENCH_RUNS=$BENCH_RUNS
LAB_HAVE_VMR=$([ -n "$VMR_BIN" ] && echo 1 || echo 0)
CFG
    # Packed per boot by boot_l1 (uncompressed: unpacking a gzip archive of ~170 MB under TCG
    # costs more than reading it).
}

# boot_l1 LOG ONLY: one L1 boot running the scenarios in ONLY (all if empty), with a hard timeout
# and a progress watchdog: under TCG an L1 kernel (or its nested KVM) can wedge for good, and then
# no timeout inside L1 fires. L1 prints a LAB-TICK every 15 s while it lives: none for TICK_TIMEOUT
# seconds means all of L1 is wedged. A wedge that leaves the ticker running (one L1 CPU stuck in
# its guest) shows as no other LAB line for STALL_TIMEOUT seconds. Either ends the boot.
L1_PID=""
cleanup() { if [ -n "$L1_PID" ]; then kill "$L1_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
STALL_TIMEOUT=${VMR_LAB_STALL_TIMEOUT:-$((SCENARIO_TIMEOUT + 120))}
TICK_TIMEOUT=${VMR_LAB_TICK_TIMEOUT:-75}
boot_l1() {
    local log=$1 only=$2
    local budget=$((TOTAL_TIMEOUT - ($(date +%s) - start)))
    [ "$budget" -lt "$L1_TIMEOUT" ] && L1_TIMEOUT=$budget
    # The log exists before QEMU and tail start: tail -f on a file that is not there yet exits at
    # once, and the LAB lines would then never reach our output (a race the CI machine lost).
    : > "$log.raw"
    timeout -k 5 "$L1_TIMEOUT" qemu-system-x86_64 -accel "$L1_ACCEL" -M microvm -cpu max \
        -smp "$L1_CPUS" -m "$L1_MEM" -nodefaults -no-user-config -display none -serial stdio \
        -no-reboot -kernel "$LAB_CACHE/generic/vmlinux" -initrd "$OUT/l1.cpio" \
        -append "console=ttyS0 panic=-1 quiet $LAB_TIMING_ARGS lab.only=${only// /,}" < /dev/null > "$log.raw" 2>&1 &
    L1_PID=$!
    tail -n +1 -f --pid="$L1_PID" "$log.raw" 2>/dev/null |
        grep --line-buffered -aE '^LAB' | grep --line-buffered -v '^LAB-TICK' | sed -u 's/\r$//' >&2 &
    local seen=0 ticks=0 now last last_tick n t stalled=0
    last=$(date +%s) last_tick=$last
    while kill -0 "$L1_PID" 2>/dev/null; do
        sleep 2
        n=$(grep -a '^LAB' "$log.raw" | grep -vc '^LAB-TICK' || true)
        t=$(grep -ac '^LAB-TICK' "$log.raw" || true); now=$(date +%s)
        [ "$t" != "$ticks" ] && { ticks=$t; last_tick=$now; }
        [ "$n" != "$seen" ] && { seen=$n; last=$now; last_tick=$now; continue; }
        if [ $((now - last)) -ge "$STALL_TIMEOUT" ] || [ $((now - last_tick)) -ge "$TICK_TIMEOUT" ]; then
            log "L1 made no progress (no LAB line for $((now - last))s, no heartbeat for $((now - last_tick))s: wedged under TCG); killing it"
            stalled=1; kill "$L1_PID" 2>/dev/null || true; break
        fi
    done
    local rc=0
    wait "$L1_PID" || rc=$?
    L1_PID=""
    wait || true
    tr -d '\r' < "$log.raw" > "$log" && rm -f "$log.raw"
    [ "$rc" = 124 ] && log "L1 killed after ${L1_TIMEOUT}s"
    [ "$stalled" = 1 ] && echo "LAB-L1 stalled" >> "$log"
    return 0
}

# The runs of this invocation, in order: scenario names without the number prefix; with
# --repeat N each scenario runs N times, as name@1 .. name@N.
SCENARIOS=""
ONLY=${ONLY//,/ }
for want in $ONLY; do
    ls "$LAB_DIR"/scenarios/[0-9][0-9]-"$want".sh > /dev/null 2>&1 || die "--only: no scenario named '$want'"
done
for ((round = 1; round <= REPEAT; round++)); do
    for f in "$LAB_DIR"/scenarios/*.sh; do
        n=$(basename "$f" .sh); n=${n#[0-9][0-9]-}
        [ "$REPEAT" -gt 1 ] && n="$n@$round"
        case " $ONLY " in "  "|*" ${n%@*} "*) SCENARIOS="$SCENARIOS $n" ;; esac
    done
done
results() { cat "$OUT"/l1-serial.*.log 2>/dev/null | grep -aE '^LAB [^ ]+ (PASS|FAIL|SKIP)' || true; }
has_result() { grep -aqE "^LAB $1 (PASS|FAIL|SKIP)" "$OUT"/l1-serial.*.log 2>/dev/null; }

# run_shard SHARD "RUNS": L1 boots until every run of the list has a result. A wedged L1 costs
# one boot: the runs without a result go on in a fresh L1. The one that was running when L1
# wedged gets one more chance; if L1 wedges in it again it fails.
run_shard() {
    local shard=$1 only=$2 attempt=0 hung_once="" log remaining first n
    trap cleanup EXIT
    trap 'exit 143' TERM
    while :; do
        attempt=$((attempt + 1))
        log="$OUT/l1-serial.$shard.$attempt.log"
        boot_l1 "$log" "$only"
        [ "$MODE" = bench ] && break
        grep -q '^LAB-END' "$log" && break
        remaining=""
        for n in $only; do has_result "$n" || remaining="$remaining $n"; done
        [ -z "$remaining" ] && break
        [ $attempt -ge "$MAX_BOOTS" ] && { log "shard $shard: giving up after $attempt L1 boots"; break; }
        [ $(($(date +%s) - start)) -ge $((TOTAL_TIMEOUT - 120)) ] && { log "shard $shard: out of time after $attempt L1 boots"; break; }
        if ! grep -q '^LAB-L1 kvm ready' "$log" && ! grep -q '^LAB-L1 no /dev/kvm' "$log"; then
            log "shard $shard: L1 boot $attempt hung before KVM was ready; retrying"
        else
            first=${remaining# }; first=${first%% *}
            if [ "$first" = "$hung_once" ]; then
                echo "LAB $first FAIL L1 wedged twice while running it (logs in $OUT)" | tee -a "$log" >&2
                remaining=${remaining# }; remaining=${remaining#"$first"}
                [ -z "${remaining// /}" ] && break
            else
                hung_once=$first
                log "shard $shard: L1 wedged during $first; running the rest in a new L1:$remaining"
            fi
        fi
        only=${remaining# }
    done
    echo "$attempt" > "$OUT/boots.$shard"
}

start=$(date +%s)
build_l1_initramfs
(cd "$OUT/l1-root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet > "$OUT/l1.cpio")
log "L1 initramfs $(du -sm "$OUT/l1-root" | cut -f1) MiB, vmm=$VMM, built in $(( $(date +%s) - start ))s"
rm -f "$OUT"/l1-serial.*.log "$OUT"/boots.*
MAX_BOOTS=${VMR_LAB_MAX_BOOTS:-4}
# The runs are dealt to SHARDS L1 machines booted side by side (one host core each with the
# default one L1 vCPU); the benchmark always uses one.
[ "$MODE" = bench ] && SHARDS=1
set -- $SCENARIOS
[ "$SHARDS" -gt $# ] && [ $# -gt 0 ] && SHARDS=$#
declare -a shard_runs=()
i=0
for n in $SCENARIOS; do shard_runs[$((i % SHARDS))]+=" $n"; i=$((i + 1)); done
pids=()
for ((k = 0; k < SHARDS; k++)); do
    run_shard "$((k + 1))" "${shard_runs[$k]# }" &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
for p in "${pids[@]}"; do wait "$p" || true; done
attempt=$(cat "$OUT"/boots.* 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
log=$(ls "$OUT"/l1-serial.*.log 2>/dev/null | tail -n 1)
rm -f "$OUT/l1.cpio"; rm -rf "$OUT/l1-root"
all=$(results)
passed=$(echo "$all" | grep -cE '^LAB [^ ]+ PASS' || true)
failed=$(echo "$all" | grep -cE '^LAB [^ ]+ FAIL' || true)
skipped=$(echo "$all" | grep -cE '^LAB [^ ]+ SKIP' || true)
if [ "$MODE" = scenarios ]; then
    missing=0
    for n in $SCENARIOS; do has_result "$n" || missing=$((missing + 1)); done
    [ "$missing" -gt 0 ] && { log "$missing scenario(s) produced no result"; failed=$((failed + missing)); }
else
    grep -q '^LAB-END' "$log" || { log "L1 did not finish (no LAB-END)"; failed=$((failed + 1)); }
fi
wedges=$(cat "$OUT"/l1-serial.*.log 2>/dev/null | grep -c '^LAB-L1 stalled' || true)
log "total $(( $(date +%s) - start ))s, $SHARDS shard(s), $attempt L1 boot(s), $wedges wedged, logs in $OUT"
# The verdicts again, from the logs, on stdout: what was streamed above is progress, this is the
# record (tests/lab.rs reads it).
[ "$MODE" = scenarios ] && [ -n "$all" ] && echo "$all"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
