# Guest `reboot -f` ends the VM with vmr's documented reboot exit code.
# QEMU (run with -no-reboot) exits 0 on a reboot; the kernel's "Restarting system" line tells it
# apart from a poweroff.
VMR_REBOOT_EXIT=${VMR_REBOOT_EXIT:-2}
boot_l2 "$LAB_L2/generic-vmlinux" "$LAB_L2/initramfs.cpio.gz" "vmr.test=reboot" "" ""
has "VMR-LAB init" || fail "no init marker (rc=$RC)"
has "VMR-LAB rebooting" || fail "guest did not reach reboot"
has "VMR-LAB reboot-failed" && fail "reboot -f returned inside the guest"
has "VMR-LAB done" && fail "guest kept running after reboot -f"
if [ "$LAB_VMM" = qemu ]; then
    [ "$RC" = 0 ] || fail "qemu exit code $RC after reboot (want 0 with -no-reboot)"
    has "Restarting system" || fail "no 'Restarting system' from the kernel"
    pass "qemu -no-reboot exited 0 after the guest's reboot"
fi
[ "$RC" = "$VMR_REBOOT_EXIT" ] || fail "exit code $RC after guest reboot (want VMR_REBOOT_EXIT=$VMR_REBOOT_EXIT)"
pass "exit code $RC after guest reboot"
