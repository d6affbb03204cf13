# vmr's API on KVM (issue 8): the request sequence of firecracker-go-sdk's Machine.Start over
# the Unix socket (logger, metrics, machine config, boot source, drive, network interface on a
# real tap, InstanceStart); GET / says Running; pause stops the guest's ticks and uses no CPU,
# resume goes on at the next tick; a tx rate limiter set live slows the guest's sends to L1; a
# swapped drive's new size reaches the guest; FlushMetrics writes a line; the ACPI power button
# powers the guest off and vmr exits 0. Then Kata's Go runtime's start (config file + API socket,
# placeholder drive PATCHed after start) and `vmr ctl ctrl-alt-del` (guest restart: exit 2, as
# Firecracker).
[ "$LAB_VMM" = qemu ] && skip "drives vmr's API"
need_tun

SOCK=$LAB_OUT/api.sock
pid=""
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null' EXIT
# api METHOD PATH [BODY]: one HTTP/1.1 request; prints the status code, the reply is in $REPLY_FILE.
REPLY_FILE=$LAB_OUT/api.reply
api() {
    printf '%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$1" "$2" "${#3}" "$3" | socat -t 10 - UNIX-CONNECT:"$SOCK" > "$REPLY_FILE" 2>&1
    sed -n '1s/^HTTP\/1.1 \([0-9]*\).*/\1/p' "$REPLY_FILE" | tr -d '\r'
}
ok() { code=$(api "$@"); [ "$code" = 204 ] || fail "$1 $2: status '$code' $(tail -c 300 "$REPLY_FILE")"; }
ticks() { sed -n 's/^VMR-LAB tick=\([0-9]*\).*/\1/p' "$OUT" | tr -d '\r' | tail -1; }
wait_for() { # TEXT SECONDS
    i=0
    while ! grep -q "$1" "$OUT" && [ $i -lt $(($2 * 5)) ] && kill -0 $pid 2>/dev/null; do
        sleep 0.2; i=$((i + 1)); done
    grep -q "$1" "$OUT"
}
cpu_ticks() { awk '{ print $14 + $15 }' /proc/$pid/stat; }
uptime_cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }
fetch_cs() { # centiseconds to fetch the guest's 1 MiB over the tap (fails unless all of it came)
    t0=$(uptime_cs)
    n=$(timeout 60 socat -u TCP:10.0.2.2:7000 - | wc -c)
    [ "$n" = 1048576 ] || fail "fetched $n bytes from the guest, want 1048576"
    echo $(($(uptime_cs) - t0))
}

dd if=/dev/zero of="$LAB_OUT/small.img" bs=1M count=1 2>/dev/null
dd if=/dev/zero of="$LAB_OUT/large.img" bs=1M count=4 2>/dev/null
BOOTS=1; OUT=$LAB_OUT/serial.1.log
"$VMR" --api-sock "$SOCK" --id lab-api < /dev/null > "$OUT" 2>&1 &
pid=$!
i=0; while [ ! -S "$SOCK" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -S "$SOCK" ] || fail "no API socket after 5 s"
api GET / > /dev/null; grep -q '"state":"Not started"' "$REPLY_FILE" || fail "GET / before start: $(tail -c 200 "$REPLY_FILE")"
ok PUT /logger "{\"log_path\":\"$LAB_OUT/vmr.log\",\"level\":\"Info\",\"show_level\":true}"
ok PUT /metrics "{\"metrics_path\":\"$LAB_OUT/metrics.json\"}"
ok PUT /machine-config '{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}'
ok PUT /boot-source "{\"kernel_image_path\":\"$LAB_L2/generic-vmlinux\",\"initrd_path\":\"$LAB_L2/initramfs.cpio.gz\",\"boot_args\":\"$L2_CMDLINE_BASE vmr.test=api\"}"
ok PUT /drives/data "{\"drive_id\":\"data\",\"path_on_host\":\"$LAB_OUT/small.img\",\"is_root_device\":false,\"is_read_only\":false}"
ok PUT /network-interfaces/eth0 '{"iface_id":"eth0","host_dev_name":"vmrtap0","guest_mac":"52:54:00:12:34:66"}'
ok PUT /actions '{"action_type":"InstanceStart"}'
api GET / > /dev/null; grep -q '"state":"Running"' "$REPLY_FILE" || fail "GET / after start: $(tail -c 200 "$REPLY_FILE")"
ip addr add 10.0.2.1/24 dev vmrtap0 && ip link set vmrtap0 up || echo "cannot configure vmrtap0"
wait_for "VMR-LAB api-ready" "$LAB_BOOT_TIMEOUT" || { kill -9 $pid; fail "guest never got ready"; }
grep -q "VMR-LAB api-ready size=2048 " "$OUT" || fail "drive size at boot: $(grep api-ready "$OUT")"
i=0; while [ "$(ticks)" -lt 3 ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done

# Pause: no tick and (almost) no CPU for 3 s; resume: the next tick follows.
ok PATCH /vm '{"state":"Paused"}'
api GET / > /dev/null; grep -q '"state":"Paused"' "$REPLY_FILE" || fail "GET / after pause: $(tail -c 200 "$REPLY_FILE")"
sleep 0.5; last=$(ticks); c0=$(cpu_ticks)
sleep 3
[ "$(ticks)" = "$last" ] || fail "the guest ticked while paused ($last -> $(ticks))"
used=$(($(cpu_ticks) - c0))
[ "$used" -le 10 ] || fail "a paused VM used $used CPU ticks in 3 s"
ok PATCH /vm '{"state":"Resumed"}'
i=0; while [ "$(ticks)" = "$last" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
grep -q "VMR-LAB tick=$((last + 1))" "$OUT" || fail "no tick $((last + 1)) after resume (last $(ticks))"

# A tx limiter of 256 KiB/s set live: 1 MiB minus the 64 KiB burst takes >= 3.75 s.
free=$(fetch_cs)
ok PATCH /network-interfaces/eth0 '{"iface_id":"eth0","tx_rate_limiter":{"bandwidth":{"size":65536,"refill_time":250}}}'
limited=$(fetch_cs)
[ "$limited" -ge 340 ] && [ "$limited" -le 1500 ] || fail "1 MiB at 256 KiB/s took ${limited} cs (unlimited ${free} cs)"

# Drive swap: the guest sees the new size.
ok PATCH /drives/data "{\"drive_id\":\"data\",\"path_on_host\":\"$LAB_OUT/large.img\"}"
wait_for "VMR-LAB newsize=8192" 30 || fail "the guest did not see the swapped drive's size"
ok PUT /actions '{"action_type":"FlushMetrics"}'
grep -q '"api_server"' "$LAB_OUT/metrics.json" || fail "no metrics line after FlushMetrics"

# The power button: acpid in the guest powers off, vmr exits 0.
ok PUT /actions '{"action_type":"vmr:PowerButton"}'
i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid; RC=$?
has "VMR-LAB power-button" || fail "the guest did not act on the power button"
[ "$RC" = 0 ] || fail "exit code $RC after the power button (want 0)"
[ -e "$SOCK" ] && fail "the API socket is left behind"

# Kata's Go runtime (fc.go): `--api-sock` with `--config-file` (placeholder drives, vsock), a
# drive PATCHed in after start, then `vmr ctl ctrl-alt-del`: the guest restarts, vmr exits 2.
SOCK=$LAB_OUT/api2.sock
: > "$LAB_OUT/drive_0"
cat > "$LAB_OUT/fc.json" <<JSON
{"boot-source": {"kernel_image_path": "$LAB_L2/generic-vmlinux", "initrd_path": "$LAB_L2/initramfs.cpio.gz",
  "boot_args": "$L2_CMDLINE_BASE vmr.test=hold"},
 "drives": [{"drive_id": "drive_0", "path_on_host": "$LAB_OUT/drive_0", "is_root_device": false, "is_read_only": false}],
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "smt": false},
 "vsock": {"guest_cid": 3, "uds_path": "$LAB_OUT/kata.hvsock", "vsock_id": "root"}}
JSON
BOOTS=2; OUT=$LAB_OUT/serial.2.log
"$VMR" --api-sock "$SOCK" --config-file "$LAB_OUT/fc.json" < /dev/null > "$OUT" 2>&1 &
pid=$!
wait_for "VMR-LAB holding" "$LAB_BOOT_TIMEOUT" || { kill -9 $pid; fail "the config-file guest never held"; }
api GET / > /dev/null; grep -q '"state":"Running"' "$REPLY_FILE" || fail "GET / (config file): $(tail -c 200 "$REPLY_FILE")"
ok PATCH /drives/drive_0 "{\"drive_id\":\"drive_0\",\"path_on_host\":\"$LAB_OUT/large.img\"}"
"$VMR" ctl --api-sock "$SOCK" ctrl-alt-del > /dev/null || fail "vmr ctl ctrl-alt-del failed"
i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid; RC=$?
[ "$RC" = 2 ] || fail "exit code $RC after Ctrl-Alt-Del (want 2: guest restart)"
pass "go-sdk sequence on KVM; pause held ticks at $last with $used CPU ticks; 1 MiB in ${free} cs free, ${limited} cs at 256 KiB/s; drive swap seen; power button -> 0; Kata config-file boot + drive PATCH; ctrl-alt-del -> 2"
