# virtio-rng: the guest's hw_random core picks the virtio device and /dev/hwrng gives bytes.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --rng"
printf '#!/bin/sh\nexec %s "$@" --rng\n' "$VMR" > "$LAB_OUT/vmr"
chmod +x "$LAB_OUT/vmr"; VMR=$LAB_OUT/vmr
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=rng" "" ""
expect_clean_boot
case "$(value rng_current)" in virtio*) ;; *) fail "rng_current is '$(value rng_current)'" ;; esac
[ "$(value hwrng_bytes)" = 256 ] || fail "read $(value hwrng_bytes) bytes from /dev/hwrng, want 256"
[ "$(value hwrng_nonzero)" = 1 ] || fail "/dev/hwrng gave only zero bytes"
pass "rng_current=$(value rng_current), 256 bytes from /dev/hwrng"
