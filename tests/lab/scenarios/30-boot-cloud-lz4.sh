# Debian cloud kernel bzImage (LZ4 payload) reaches /init; poweroff gives exit 0.
boot_l2 "$LAB_L2/cloud-bzImage" "$LAB_L2/initramfs.cpio.gz" "vmr.test=boot" "" ""
expect_clean_boot
pass "cloud bzImage boot, init at guest uptime $(value uptime)s"
