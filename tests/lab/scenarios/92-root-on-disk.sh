# Root filesystem on virtio-blk: an ext4 made with mkfs.ext4 -d (busybox + /sbin/init), booted
# with root=/dev/vda (the initramfs loads the modules and switch_roots).
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --disk"
r=$LAB_OUT/rootdir
mkdir -p "$r/bin" "$r/sbin" "$r/proc" "$r/sys" "$r/dev"
cp /bin/busybox "$r/bin/busybox"; ln -s busybox "$r/bin/sh"
cat > "$r/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc
echo "VMR-LAB rootfs-init root=$(/bin/busybox awk '$2 == "/" { print $1 }' /proc/mounts | /bin/busybox tail -1)"
echo "VMR-LAB done"
/bin/busybox poweroff -f
INIT
chmod 755 "$r/sbin/init"
mkfs.ext4 -q -d "$r" "$LAB_OUT/root.img" 32M >/dev/null || fail "mkfs.ext4 -d failed"
printf '#!/bin/sh\nexec %s "$@" --disk path=%s\n' "$VMR" "$LAB_OUT/root.img" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "root=/dev/vda vmr.test=rootfs" "" ""
expect_clean_boot
[ "$(value root)" = /dev/vda ] || fail "/ is '$(value root)', want /dev/vda"
pass "init ran from an ext4 root on /dev/vda"
