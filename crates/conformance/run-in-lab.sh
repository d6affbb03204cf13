#!/usr/bin/env bash
# Runs the vmr-kvm and vmr-conformance tests against real KVM semantics: inside an L1 Linux
# under QEMU TCG (-cpu max emulates AMD SVM) with the stock kvm_amd module loaded.
# See /work/shared/docs/kvm-lab.md. Needs the lab cache made by tests/lab/prepare.sh
# (${VMR_LAB_CACHE:-$HOME/.cache/vmr/lab}/generic/{vmlinux,modules/*.ko}).
# Exits non-zero if any test fails or the lab does not report a result.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${VMR_LAB_CACHE:-$HOME/.cache/vmr/lab}
KERNEL=$CACHE/generic/vmlinux
[ -s "$KERNEL" ] || { echo "run-in-lab: no $KERNEL: run tests/lab/prepare.sh first" >&2; exit 1; }

mapfile -t TESTS < <(cargo test -p vmr-kvm -p vmr-conformance --release --no-run 2>&1 |
    grep -oE '\([^()]*/release/deps/[^()]+\)' | tr -d '()')
[ ${#TESTS[@]} -gt 0 ] || { echo "run-in-lab: no test binaries were built" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,proc,sys,dev,tmp,tests,modules}
cp /bin/busybox "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
cp "$CACHE"/generic/modules/{irqbypass,kvm,ccp,kvm-amd}.ko "$ROOT/modules/"
for t in "${TESTS[@]}"; do
    name=$(basename "$t"); cp "$t" "$ROOT/tests/${name%-*}"
    # The shared libraries the test binaries need, at the same paths.
    for lib in $(ldd "$t" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
        mkdir -p "$ROOT$(dirname "$lib")"; cp -Ln "$lib" "$ROOT$lib" 2>/dev/null || true
    done
done
cat > "$ROOT/init" <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in irqbypass kvm ccp kvm-amd; do insmod /modules/$m.ko || echo "insmod $m failed"; done
[ -e /dev/kvm ] || echo "LAB-NO-KVM"
# A heartbeat: when it stops, the whole L1 is wedged (the host's watchdog then ends it).
(while sleep 10; do echo "LAB-TICK"; done) &
# vmr_skip=a,b on the command line: test binaries a retry does not run again.
skip=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^vmr_skip=//p' | tr ',' ' ')
for t in /tests/*; do
    name=${t##*/}
    case " $skip " in *" $name "*) continue ;; esac
    echo "=== $t"
    # A hung test must not take the whole lab with it: each binary gets its own deadline.
    timeout -s KILL 120 "$t" --test-threads=1 --nocapture 2>&1
    echo "LAB-DONE $name rc=$?"
done
echo "LAB-RESULT"
poweroff -f
EOF
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1 > "$WORK/l1.cpio.gz")

mhz=$(awk -F: '/^cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
tsc_khz=$(awk -v m="${mhz:-2445.4}" 'BEGIN { printf "%d\n", m * 1000 }')
LOGDIR=target/lab
STALL=${VMR_LAB_STALL_TIMEOUT:-60}
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/conformance.*.log
done_list=() fail=0
for attempt in 1 2 3; do
    LOG=$LOGDIR/conformance.$attempt.log
    skip=$(IFS=,; echo "${done_list[*]}")
    # Single-threaded TCG: multi-threaded, L1 wedged within minutes of nested KVM (docs/LAB.md).
    timeout 600 qemu-system-x86_64 -accel "${VMR_LAB_L1_ACCEL:-tcg,thread=single}" -M microvm -cpu max -smp 2 -m 2048 -nographic \
        -no-reboot -kernel "$KERNEL" -initrd "$WORK/l1.cpio.gz" \
        -append "console=ttyS0 panic=-1 quiet lpj=10384468 tsc_early_khz=$tsc_khz vmr_skip=$skip" \
        > "$LOG" 2>&1 &
    qemu=$!
    # Under TCG an L1 can wedge for good (all of it, heartbeat included): no timeout inside L1
    # fires then. No output for STALL seconds ends the boot.
    size=0 quiet=0
    while kill -0 "$qemu" 2>/dev/null; do
        sleep 5
        now=$(stat -c %s "$LOG")
        if [ "$now" = "$size" ]; then quiet=$((quiet + 5)); else size=$now quiet=0; fi
        if [ "$quiet" -ge "$STALL" ]; then
            echo "run-in-lab: L1 silent for ${STALL}s (wedged); stopping it" >&2
            kill "$qemu" 2>/dev/null || true
            break
        fi
    done
    wait "$qemu" || true
    grep -E '^===|test result|panicked|FAILED|LAB-' "$LOG" | grep -v LAB-TICK || true
    grep -q 'LAB-NO-KVM' "$LOG" && { echo "run-in-lab: no /dev/kvm in the lab" >&2; exit 1; }
    while read -r name rc; do
        done_list+=("$name")
        [ "$rc" = 0 ] || { fail=1; echo "run-in-lab: $name failed (exit $rc, 137 = killed at its deadline); log: $LOG" >&2; }
    done < <(sed -n 's/^LAB-DONE \([^ ]*\) rc=\([0-9]*\).*/\1 \2/p' "$LOG")
    grep -q 'LAB-RESULT' "$LOG" && break
    # The L1 itself stopped (a TCG boot hang or a wedged L1): go on in a fresh L1 with the
    # binaries that have no result, including the one that was running.
    echo "run-in-lab: attempt $attempt ended early (log $LOG, last lines below); retrying the rest" >&2
    tail -5 "$LOG" >&2
    [ "$attempt" = 3 ] && { echo "run-in-lab: the lab never finished" >&2; exit 1; }
done
echo "run-in-lab: ${#done_list[@]} test binaries run, fail=$fail"
[ "$fail" = 0 ]
