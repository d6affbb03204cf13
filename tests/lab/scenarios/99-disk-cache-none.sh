# --disk ...,cache=none (O_DIRECT). L1's files live in tmpfs, which has O_DIRECT only from Linux
# 6.6: on the lab's 6.1 kernel vmr must refuse the raw image with one line naming O_DIRECT and
# exit 1 before the guest starts; where tmpfs has O_DIRECT the guest makes a filesystem on the
# disk and debugfs reads it back. A qcow2 image with cache=none is refused in one line either way.
[ "$LAB_VMM" = qemu ] && skip "checks vmr's --disk cache=none"
k="--kernel $LAB_L2/generic-vmlinux --initrd $LAB_L2/initramfs.cpio.gz --accel kvm"
# refused NAME WANT ARGS...: exit 1, one error line containing WANT, no guest output.
refused() {
    name=$1 want=$2; shift 2
    OUT=$LAB_OUT/$name.log
    timeout -s KILL 60 "$VMR" run $k "$@" < /dev/null > "$LAB_OUT/$name.out" 2> "$OUT"; RC=$?
    grep -v '^vmr: accelerator' "$OUT" > "$OUT.err"
    [ "$RC" = 1 ] && [ "$(wc -l < "$OUT.err")" = 1 ] && grep -qF -- "$want" "$OUT.err" &&
        ! grep -q "VMR-LAB" "$LAB_OUT/$name.out"
}
qemu-img create -q -f qcow2 "$LAB_OUT/disk.qcow2" 16M || fail "qemu-img create failed"
refused qcow2 "cache=none is supported for raw images only" \
    --disk "path=$LAB_OUT/disk.qcow2,format=qcow2,cache=none" ||
    fail "qcow2 with cache=none: exit $RC, '$(cat "$OUT.err")'"
img=$LAB_OUT/disk.raw
dd if=/dev/zero of="$img" bs=1M count=32 2>/dev/null
if refused tmpfs "with cache=none (O_DIRECT)" --disk "path=$img,cache=none"; then
    pass "refused in one line on L1's tmpfs (no O_DIRECT before 6.6); qcow2 refused in one line"
fi
[ "$RC" = 0 ] || fail "raw image with cache=none: exit $RC, '$(cat "$OUT.err")'"
# O_DIRECT works here: the guest makes a filesystem through it; debugfs reads the files back.
printf '#!/bin/sh\nexec %s "$@" --disk path=%s,format=raw,cache=none\n' "$VMR" "$img" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=disk-mkfs" "" ""
expect_clean_boot
has "VMR-LAB disk-written" || fail "guest did not write the cache=none disk"
got=$(debugfs -R "cat /hello.txt" "$img" 2>/dev/null)
[ "$got" = "hello from a vmr guest" ] || fail "debugfs read '$got' from /hello.txt"
pass "cache=none: guest mke2fs + files read back by debugfs; qcow2 refused in one line"
