# virtio-blk on a qcow2 overlay (made by qemu-img) over a raw ext4 base: the guest reads the base
# and writes a file; afterwards the base is unchanged, qemu-img check is clean and the file is
# in the overlay.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --disk"
mkdir -p "$LAB_OUT/basedir" && echo "from the base image" > "$LAB_OUT/basedir/base.txt"
base=$LAB_OUT/base.raw; top=$LAB_OUT/overlay.qcow2
mkfs.ext4 -q -d "$LAB_OUT/basedir" "$base" 64M >/dev/null || fail "mkfs.ext4 -d failed"
qemu-img create -q -f qcow2 -b "$base" -F raw "$top" || fail "qemu-img create failed"
before=$(sha256sum "$base" | cut -c1-64)
printf '#!/bin/sh\nexec %s "$@" --disk path=%s,format=qcow2\n' "$VMR" "$top" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=disk-overlay" "" ""
expect_clean_boot
has "VMR-LAB base=from the base image" || fail "guest did not read the base's file"
has "VMR-LAB disk-written" || fail "guest did not write the disk"
[ "$(sha256sum "$base" | cut -c1-64)" = "$before" ] || fail "the base image changed"
check=$(qemu-img check "$top" 2>&1) || fail "qemu-img check: $(echo "$check" | head -3 | tr '\n' ' ')"
qemu-img convert -O raw "$top" "$LAB_OUT/flat.raw" || fail "qemu-img convert failed"
got=$(debugfs -R "cat /new.txt" "$LAB_OUT/flat.raw" 2>/dev/null)
[ "$got" = "written through the overlay" ] || fail "debugfs read '$got' from /new.txt"
pass "base unchanged, qemu-img check clean, overlay holds the guest's file"
