#!/usr/bin/env python3
"""Sends commands to a qemu human monitor (HMP) on a unix socket and waits for each.

    monitor.py SOCKET COMMAND...
"""
import socket
import sys
import time


def read_prompt(sock, timeout):
    data = b""
    deadline = time.time() + timeout
    sock.settimeout(1.0)
    while not data.endswith(b"(qemu) "):
        if time.time() > deadline:
            raise SystemExit("monitor: no prompt from qemu")
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    return data


def main():
    path, commands = sys.argv[1], sys.argv[2:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(50):
        try:
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.1)
    read_prompt(sock, 30)
    for command in commands:
        sock.sendall(command.encode() + b"\n")
        if command == "quit":
            # qemu closes the connection when it exits.
            sock.settimeout(30)
            while sock.recv(65536):
                pass
            return
        reply = read_prompt(sock, 600).decode(errors="replace")
        # The reply echoes the command; anything after the echo is an error message.
        tail = reply.rsplit("\r\n(qemu) ", 1)[0].split("\r\n")[1:]
        if any(line.strip() for line in tail):
            sys.exit(f"monitor: {command}: {' '.join(tail).strip()}")


if __name__ == "__main__":
    main()
