# Idle RSS per connection: N raw clients negotiate permessage-deflate (or not), each sends
# one compressed join, then all stay idle; prints the server's RSS growth per connection.
#
#   python3 scripts/idle-deflate.py PORT SERVER_PID N OFFER TOKEN
#   OFFER: "permessage-deflate" (client keeps its context), "permessage-deflate;
#   client_no_context_takeover", or "none". The server needs --max-conns-per-ip and
#   --max-upgrades-per-ip-per-sec above N; TOKEN from `corechat token --user u ...`.
import json
import socket
import sys
import time
import zlib

port, pid, n, offer, token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def rss(): 
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1])
def frame(payload):
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    d = z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)
    d = d[:-4]
    mask = b'\x01\x02\x03\x04'
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(d))
    n = len(d)
    hdr = bytes([0xc1, 0x80 | n]) if n < 126 else bytes([0xc1, 0x80 | 126]) + n.to_bytes(2, 'big')
    return hdr + mask + body
before = rss()
socks = []
for i in range(n):
    s = socket.create_connection(('127.0.0.1', port))
    ext = f'Sec-WebSocket-Extensions: {offer}\r\n' if offer != 'none' else ''
    s.sendall((f'GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
               f'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n').encode())
    buf = b''
    while b'\r\n\r\n' not in buf: buf += s.recv(4096)
    if offer != 'none':
        s.sendall(frame(json.dumps({"type": "join", "room": f"r{i % 50}", "id": 1}).encode()))
    socks.append(s)
time.sleep(3)
after = rss()
print(f'{offer!r}: {n} conns, RSS {before} -> {after} KiB = {(after - before) / n:.2f} KiB/conn')
