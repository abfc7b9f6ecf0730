#!/usr/bin/env python3
"""Writes an llm.c token shard the way llm.c's dev/data/data_common.py write_datafile does (a
256 x int32 header: magic, version, token count; then the tokens as uint16 for "gpt-2" or uint32
for "llama-3"), independently of dirmoe's writer, for the reader's tests.

usage: write_llmc_shard.py OUT.bin gpt-2|llama-3 TOKEN [TOKEN...]
"""
import sys

import numpy as np

HEADERS = {
    "gpt-2": (20240520, 1, np.uint16),
    "llama-3": (20240801, 7, np.uint32),
}


def main():
    out, desc, toks = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3:]]
    magic, version, dtype = HEADERS[desc]
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(toks)
    data = np.array(toks, dtype=dtype)
    assert [int(t) for t in data] == toks, "a token does not fit the format"
    with open(out, "wb") as f:
        f.write(header.tobytes())
        f.write(data.tobytes())


if __name__ == "__main__":
    main()
