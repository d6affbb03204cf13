# virtio-blk on a blank raw image made by `vmr image create`: the guest makes an ext2 filesystem,
# writes files, syncs, powers off; debugfs on the host side reads them back.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --disk and vmr image create"
img=$LAB_OUT/blank.raw
"$VMR" image create "$img" 64M || fail "vmr image create failed"
[ "$(stat -c %s "$img")" = $((64 << 20)) ] || fail "image size $(stat -c %s "$img"), want 64 MiB"
printf '#!/bin/sh\nexec %s "$@" --disk path=%s,format=raw,serial=lab-disk-1\n' "$VMR" "$img" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=disk-mkfs" "" ""
expect_clean_boot
has "VMR-LAB disk-written" || fail "guest did not write the disk"
[ "$(value serial)" = lab-disk-1 ] || fail "serial '$(value serial)', want lab-disk-1"
[ "$(value ro)" = 0 ] || fail "disk is read-only in the guest"
got=$(debugfs -R "cat /hello.txt" "$img" 2>/dev/null)
[ "$got" = "hello from a vmr guest" ] || fail "debugfs read '$got' from /hello.txt"
want=$(seq 1 2000 | sha256sum | cut -c1-64)
got=$(debugfs -R "cat /dir/numbers" "$img" 2>/dev/null | sha256sum | cut -c1-64)
[ "$got" = "$want" ] || fail "/dir/numbers differs on the host"
pass "guest mke2fs + files read back by debugfs, serial lab-disk-1"
