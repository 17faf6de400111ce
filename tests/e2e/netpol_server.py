"""The probe server both NetworkPolicy e2e suites run in each pod namespace.

TCP 8080 and 9090 answer ``ok`` and close; UDP 53 and 5353 echo. The lab suite (kube-mode lab)
and the traffic suite (the enforcer against hand-built namespaces) probe the same server, so an
allowed or denied verdict means the same thing in both.
"""

SERVER = """
import socket, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(64); s.sendto(data, peer)
for p in (8080, 9090):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
threading.Thread(target=udp, args=(5353,), daemon=True).start()
udp(53)
"""
