# Helpers for lab scenarios, sourced inside L1 by busybox sh.
# Environment from l1/init: LAB_VMM (vmr|qemu), VMR (path of the vmr binary), LAB_L2 (dir with
# generic-vmlinux, generic-bzImage, cloud-bzImage, initramfs.cpio.gz), LAB_TIMING_ARGS,
# LAB_OUT (a per-scenario output dir), LAB_BOOT_TIMEOUT (seconds for one L2 boot).

# reboot=k (i8042 reset, what vmr emulates) for vmr; QEMU's microvm has no i8042, and with
# reboot=k the kernel falls back to a BIOS restart that qboot turns into a reboot loop, so QEMU
# gets reboot=t (triple fault, which -no-reboot turns into an exit).
if [ "$LAB_VMM" = qemu ]; then L2_REBOOT=reboot=t; else L2_REBOOT=reboot=k; fi
L2_CMDLINE_BASE="console=ttyS0 $L2_REBOOT panic=-1 quiet $LAB_TIMING_ARGS"

# boot_l2 KERNEL INITRD "EXTRA CMDLINE" CPUS MEM -> sets RC and OUT (file with the serial log,
# \r stripped); MEM and CPUS may be empty (VMM default). Every boot is killed after
# LAB_BOOT_TIMEOUT seconds (RC=137 then).
boot_l2() {
    kernel=$1; initrd=$2; extra=$3; cpus=$4; mem=$5
    BOOTS=$((${BOOTS:-0} + 1)); OUT=$LAB_OUT/serial.$BOOTS.log
    cmdline="$L2_CMDLINE_BASE $extra"
    if [ "$LAB_VMM" = qemu ]; then
        set -- qemu-system-x86_64 -accel kvm -M microvm -cpu host -nodefaults -no-user-config \
            -display none -serial stdio -no-reboot -m "${mem:-256M}" -smp "${cpus:-1}" \
            -kernel "$kernel" -append "$cmdline"
        [ -n "$initrd" ] && set -- "$@" -initrd "$initrd"
    else
        set -- "$VMR" run --kernel "$kernel" --cmdline "$cmdline" --accel kvm
        [ -n "$initrd" ] && set -- "$@" --initrd "$initrd"
        [ -n "$cpus" ] && set -- "$@" --cpus "$cpus"
        [ -n "$mem" ] && set -- "$@" --memory "$mem"
    fi
    echo "$*" > "$LAB_OUT/cmd"
    timeout -s KILL "$LAB_BOOT_TIMEOUT" "$@" < /dev/null > "$OUT.raw" 2>&1
    RC=$?
    tr -d '\r' < "$OUT.raw" > "$OUT"
    return 0
}

# has "TEXT": the last boot's output contains TEXT.
has() { grep -qF -- "$1" "$OUT"; }
# value KEY: the value of "VMR-LAB ... KEY=value" in the last boot's output.
value() { sed -n "s/^VMR-LAB.*[ ]$1=\([^ ]*\).*/\1/p" "$OUT" | tail -1; }

pass() { echo "RESULT PASS $*"; exit 0; }
fail() {
    echo "RESULT FAIL $*"
    echo "--- last lines of the L2 output (rc=$RC) ---"
    tail -n 8 "$OUT" 2>/dev/null | sed 's/^/    | /'
    exit 1
}
skip() { echo "RESULT SKIP $*"; exit 0; }

# expect_clean_boot: marker seen, test finished, VMM exited 0.
expect_clean_boot() {
    has "VMR-LAB init" || fail "no init marker (rc=$RC)"
    has "VMR-LAB done" || fail "init marker but the test did not finish (rc=$RC)"
    [ "$RC" = 0 ] || fail "exit code $RC after poweroff (want 0)"
}

# need_tun: /dev/net/tun in L1 (for the tap scenarios), else the scenario fails. L1 runs the same
# generic kernel as L2: tun.ko is taken from the L2 initramfs.
need_tun() {
    if [ ! -c /dev/net/tun ]; then
        (cd "$LAB_OUT" && zcat "$LAB_L2/initramfs.cpio.gz" | cpio -id lib/modules/tun.ko 2>/dev/null)
        insmod "$LAB_OUT/lib/modules/tun.ko" 2>/dev/null
        i=0; while [ ! -c /dev/net/tun ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    [ -c /dev/net/tun ] || fail "no /dev/net/tun in L1"
}
