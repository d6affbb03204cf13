# virtio-net on a tap inside L1: vmr creates tap vmrtap0, L1 gives it 10.0.2.1/24, the guest
# 10.0.2.2/24; ping from the guest, then TCP both ways with busybox nc.
[ "$LAB_VMM" = qemu ] && skip "uses vmr's --net"
need_tun
nc -l -p 7001 > "$LAB_OUT/from-guest" &
listener=$!
BOOTS=1; OUT=$LAB_OUT/serial.1.log
"$VMR" run --kernel "$LAB_L2/generic-vmlinux" --initrd "$LAB_L2/initramfs.cpio.gz" --accel kvm \
    --cmdline "$L2_CMDLINE_BASE vmr.test=net" --net tap=vmrtap0,mac=52:54:00:12:34:56 \
    < /dev/null > "$OUT.raw" 2>&1 &
pid=$!
i=0; while [ ! -e /sys/class/net/vmrtap0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add 10.0.2.1/24 dev vmrtap0 && ip link set vmrtap0 up || echo "cannot configure vmrtap0"
i=0
while ! grep -q "VMR-LAB listening" "$OUT.raw" && [ $i -lt 600 ] && kill -0 $pid 2>/dev/null; do
    sleep 0.2; i=$((i + 1))
done
echo "hello guest" | nc -w 5 10.0.2.2 7000 || echo "host to guest connect failed"
i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid; RC=$?
kill $listener 2>/dev/null
tr -d '\r' < "$OUT.raw" > "$OUT"
expect_clean_boot
[ "$(value mac)" = 52:54:00:12:34:56 ] || fail "guest MAC '$(value mac)'"
[ "$(value ping)" = ok ] || fail "guest could not ping 10.0.2.1"
[ "$(cat "$LAB_OUT/from-guest")" = "hello host" ] || fail "L1 got '$(cat "$LAB_OUT/from-guest")' from the guest"
[ "$(value got)" = hello-guest ] || fail "guest got '$(value got)' from L1"
pass "ping and TCP both ways over tap vmrtap0"
