#!/usr/bin/env python3
"""API start-up and overhead on this host's software CPU (issue 8).

    cargo build --release && python3 tests/bench-api.py [--vmr target/release/vmr] [--runs 10]

1. Start to guest marker: a tiny PVH guest that prints a marker on COM1 and powers off, started
   (a) with `vmr run --accel emu --kernel K` and (b) through the API: spawn `vmr --api-sock S
   --accel emu`, wait for the socket, PUT /machine-config, PUT /boot-source, PUT /actions
   InstanceStart, marker. Runs alternate; medians.
2. RSS outside guest RAM (VmRSS minus the resident part of the guest RAM mapping) of a tiny
   halted guest, with and without the API thread, and its CPU use over 5 s.
"""
import argparse, os, socket, statistics, struct, subprocess, tempfile, time

LOAD = 0x1000000
MARKER = b"vmr-bench: marker\n"


def tiny_kernel(path, code, data=b""):
    f = bytearray(0x2000)
    def put(off, b): f[off:off + len(b)] = b
    put(0, bytes([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]))
    put(16, struct.pack('<HHI', 2, 0x3e, 1)); put(24, struct.pack('<QQ', LOAD, 64))
    put(52, struct.pack('<HHH', 64, 56, 2))
    note = struct.pack('<III', 4, 4, 18) + b'Xen\0' + struct.pack('<I', LOAD)
    put(64, struct.pack('<II', 1, 5) + struct.pack('<6Q', 0x1000, LOAD, LOAD, 0x1000, 0x1000, 0x1000))
    put(120, struct.pack('<II', 4, 4) + struct.pack('<6Q', 0x200, 0, 0, len(note), len(note), 4))
    put(0x200, note); put(0x1000, code); put(0x1100, data)
    open(path, 'wb').write(f)


def marker_then_poweroff():
    # mov esi, msg; mov dx, 0x3f8; loop: lodsb; test al,al; jz done; out dx,al; jmp loop
    code = b'\xbe' + struct.pack('<I', LOAD + 0x100) + bytes([0x66, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8])
    code += bytes([0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd])  # ACPI S5
    return code, MARKER + b'\0'


def http(sock_path, method, path, body=b''):
    s = socket.socket(socket.AF_UNIX); s.connect(sock_path)
    s.sendall(b'%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' % (method, path, len(body), body))
    data = b''
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    status = int(data.split(b' ', 2)[1])
    assert status in (200, 204), data
    return data


def wait_marker(proc):
    out = b''
    while MARKER not in out:
        b = proc.stdout.read1(4096) if hasattr(proc.stdout, 'read1') else proc.stdout.read(1)
        if not b:
            raise SystemExit('vmr ended before the marker')
        out += b


def start_run(vmr, kernel):
    t = time.perf_counter()
    p = subprocess.Popen([vmr, 'run', '--accel', 'emu', '--memory', '64M', '--kernel', kernel], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_marker(p); dt = time.perf_counter() - t; p.wait(); return dt


def start_api(vmr, kernel, tmp):
    sock = os.path.join(tmp, 'api.sock')
    t = time.perf_counter()
    p = subprocess.Popen([vmr, '--api-sock', sock, '--accel', 'emu'], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while True:
        try:
            http(sock, b'PUT', b'/machine-config', b'{"vcpu_count":1,"mem_size_mib":64}'); break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.0005)
    http(sock, b'PUT', b'/boot-source', b'{"kernel_image_path":"%s","boot_args":"console=ttyS0"}' % kernel.encode())
    http(sock, b'PUT', b'/actions', b'{"action_type":"InstanceStart"}')
    wait_marker(p); dt = time.perf_counter() - t; p.wait(); return dt


def rss_outside_guest(pid, guest_kib):
    total = guest = 0
    size = None
    for line in open(f'/proc/{pid}/smaps'):
        if line.startswith('Size:'):
            size = int(line.split()[1])
        elif line.startswith('Rss:'):
            rss = int(line.split()[1]); total += rss
            if size == guest_kib:
                guest += rss
    return (total - guest) / 1024


def cpu_seconds(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')


def idle(vmr, kernel, tmp, api):
    args = [vmr, 'run', '--accel', 'emu', '--memory', '128M', '--kernel', kernel]
    if api:
        args += ['--api-sock', os.path.join(tmp, 'idle.sock')]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if api:
        http(os.path.join(tmp, 'idle.sock'), b'GET', b'/')
    rss = rss_outside_guest(p.pid, 128 * 1024)
    c0 = cpu_seconds(p.pid); time.sleep(5); c1 = cpu_seconds(p.pid)
    p.terminate(); p.wait()
    return rss, (c1 - c0) / 5 * 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--vmr', default='target/release/vmr')
    ap.add_argument('--runs', type=int, default=10)
    a = ap.parse_args()
    vmr = os.path.abspath(a.vmr)
    with tempfile.TemporaryDirectory() as tmp:
        k = os.path.join(tmp, 'marker'); tiny_kernel(k, *marker_then_poweroff())
        h = os.path.join(tmp, 'halt'); tiny_kernel(h, bytes([0xfa, 0xf4, 0xeb, 0xfd]))  # cli; hlt; jmp
        run, api = [], []
        for _ in range(a.runs):
            run.append(start_run(vmr, k)); api.append(start_api(vmr, k, tmp))
        mr, ma = statistics.median(run) * 1000, statistics.median(api) * 1000
        print(f'start to marker, vmr run:       median {mr:.1f} ms  (min {min(run)*1000:.1f}, max {max(run)*1000:.1f})')
        print(f'start to marker, through API:   median {ma:.1f} ms  (min {min(api)*1000:.1f}, max {max(api)*1000:.1f})')
        print(f'API path adds:                  {ma - mr:+.1f} ms (target <= 5 ms)')
        for served in (False, True):
            rss, cpu = idle(vmr, h, tmp, served)
            print(f'halted guest, API {"served" if served else "off   "}: RSS outside guest RAM {rss:.2f} MiB, CPU {cpu:.2f}% of a core')


if __name__ == '__main__':
    main()
