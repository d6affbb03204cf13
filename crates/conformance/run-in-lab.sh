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
fail=0
[ -e /dev/kvm ] || { echo "no /dev/kvm in the lab"; fail=1; }
for t in /tests/*; do
    echo "=== $t"
    "$t" --test-threads=1 2>&1 || fail=1
done
echo "LAB-RESULT fail=$fail"
poweroff -f
EOF
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1 > "$WORK/l1.cpio.gz")

mhz=$(awk -F: '/^cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
tsc_khz=$(awk -v m="${mhz:-2445.4}" 'BEGIN { printf "%d\n", m * 1000 }')
LOG=$WORK/lab.log
for attempt in 1 2; do
    timeout 300 qemu-system-x86_64 -accel tcg -M microvm -cpu max -smp 2 -m 2048 -nographic \
        -no-reboot -kernel "$KERNEL" -initrd "$WORK/l1.cpio.gz" \
        -append "console=ttyS0 panic=-1 quiet lpj=10384468 tsc_early_khz=$tsc_khz" > "$LOG" 2>&1 || true
    grep -q 'LAB-RESULT' "$LOG" && break
    echo "run-in-lab: attempt $attempt gave no result (boot hang?), retrying" >&2
done
grep -E '^(===|test |test result)|panicked|LAB-RESULT' "$LOG" || true
grep -q 'LAB-RESULT fail=0' "$LOG"
