# Generic Debian kernel as a bzImage (xz payload) reaches /init; poweroff gives exit 0.
boot_l2 "$LAB_L2/generic-bzImage" "$LAB_L2/initramfs.cpio.gz" "vmr.test=boot" "" ""
expect_clean_boot
pass "bzImage boot, init at guest uptime $(value uptime)s"
