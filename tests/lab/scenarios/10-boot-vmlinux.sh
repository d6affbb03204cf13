# Generic Debian kernel as an ELF vmlinux (PVH entry) reaches /init; poweroff gives exit 0.
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=boot" "" ""
expect_clean_boot
pass "pvh boot, init at guest uptime $(value uptime)s"
