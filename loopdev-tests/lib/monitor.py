#!/usr/bin/env python3
"""Sends commands to a qemu human monitor (HMP) on a unix socket and waits for each.

    monitor.py SOCKET COMMAND...   runs each command in turn; exits with qemu's message at
                                   the first one qemu refuses
    monitor.py --serve SOCKET      keeps one connection for a whole boot: reads commands from
                                   stdin, one a line, and answers each with one line on stdout,
                                   "ok" or "error MESSAGE" (lib/vm.sh's hot-plug requests,
                                   which must not wait ~0.1 s for a Python start each)
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
            raise SystemExit("monitor: qemu closed the connection")
        data += chunk
    return data


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(50):
        try:
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.1)
    read_prompt(sock, 30)
    return sock


def run(sock, command):
    """Runs one command; returns None if qemu accepted it, else qemu's message."""
    sock.sendall(command.encode() + b"\n")
    if command == "quit":
        # qemu closes the connection when it exits.
        sock.settimeout(30)
        while sock.recv(65536):
            pass
        return None
    reply = read_prompt(sock, 600).decode(errors="replace")
    # The reply echoes the command; what follows the echo is an error message, except the
    # "OK" some commands (drive_add) print when they succeed.
    tail = reply.rsplit("\r\n(qemu) ", 1)[0].split("\r\n")[1:]
    message = " ".join(line.strip() for line in tail if line.strip() not in ("", "OK"))
    return message or None


def serve(path):
    sock = None
    for line in sys.stdin:
        command = line.strip()
        if not command:
            continue
        try:
            if sock is None:
                sock = connect(path)
            error = run(sock, command)
        except (OSError, SystemExit) as e:
            error, sock = str(e) or type(e).__name__, None
        print("ok" if error is None else f"error {error}", flush=True)


def main():
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    path, commands = sys.argv[1], sys.argv[2:]
    sock = connect(path)
    for command in commands:
        error = run(sock, command)
        if error:
            sys.exit(f"monitor: {command}: {error}")


if __name__ == "__main__":
    main()
