# --reboot restart with a disk: the rebuilt VM reopens (and relocks) the image and sees what the
# first boot wrote; the guest counts its boots on the disk and powers off on the second.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --disk and --reboot restart"
img=$LAB_OUT/count.img
mkfs.ext4 -q "$img" 16M >/dev/null || fail "mkfs.ext4 failed"
printf '#!/bin/sh\nexec %s "$@" --reboot restart --disk path=%s\n' "$VMR" "$img" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=disk-reboot" "" ""
has "VMR-LAB boot-count=1" || fail "first boot did not count (rc=$RC)"
has "VMR-LAB boot-count=2" || fail "the restarted VM did not see the first boot's write (rc=$RC)"
has "restarting the VM" || fail "no restart message"
expect_clean_boot
got=$(debugfs -R "cat /count" "$img" 2>/dev/null)
[ "$got" = 2 ] || fail "host reads count '$got', want 2"
pass "disk reopened across --reboot restart (2 boots counted)"
