#!/usr/bin/env python3
"""Counts occurrences of byte strings in a raw disk or memory image.

    scan.py IMAGE NEEDLE...    each NEEDLE is hex:<hex bytes> or text:<utf-8 text>

Prints one count per needle, in order. Used by the leak scenarios; the negative controls
in those scenarios show that it does find what is there.
"""
import mmap
import sys


def needle(arg):
    kind, _, value = arg.partition(":")
    if kind == "hex":
        return bytes.fromhex(value)
    if kind == "text":
        return value.encode()
    raise SystemExit(f"bad needle {arg!r}: use hex:... or text:...")


def count(data, pattern):
    n, start = 0, 0
    while True:
        i = data.find(pattern, start)
        if i < 0:
            return n
        n, start = n + 1, i + 1


def main():
    path, needles = sys.argv[1], [needle(a) for a in sys.argv[2:]]
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            print("\n".join("0" for _ in needles))
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for n in needles:
                print(count(data, n))


if __name__ == "__main__":
    main()
