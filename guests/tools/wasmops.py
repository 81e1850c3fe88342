#!/usr/bin/env python3
"""Count the operators in a wasm module's code section (no dependencies).

    wasmops.py MODULE.wasm...                 print operator counts per module
    wasmops.py --require memory.copy,memory.fill MODULE.wasm
                                              exit 1 unless every named op occurs

Decodes the MVP, sign-extension, multi-value, reference-types, bulk-memory,
saturating-conversion and tail-call encodings, which is what rustc emits for
wasm32-wasip1. Anything else (SIMD, exceptions, GC) is reported as an error.
"""
import sys
from collections import Counter

NAMES = {
    0x00: "unreachable", 0x01: "nop", 0x02: "block", 0x03: "loop", 0x04: "if", 0x05: "else",
    0x0B: "end", 0x0C: "br", 0x0D: "br_if", 0x0E: "br_table", 0x0F: "return", 0x10: "call",
    0x11: "call_indirect", 0x12: "return_call", 0x13: "return_call_indirect", 0x1A: "drop",
    0x1B: "select", 0x1C: "select_t", 0x20: "local.get", 0x21: "local.set", 0x22: "local.tee",
    0x23: "global.get", 0x24: "global.set", 0x25: "table.get", 0x26: "table.set",
    0x3F: "memory.size", 0x40: "memory.grow", 0x41: "i32.const", 0x42: "i64.const",
    0x43: "f32.const", 0x44: "f64.const", 0x6D: "i32.div_s", 0x6E: "i32.div_u",
    0x6F: "i32.rem_s", 0x70: "i32.rem_u", 0x7F: "i64.div_s", 0x80: "i64.div_u",
    0x81: "i64.rem_s", 0x82: "i64.rem_u", 0x91: "f32.sqrt", 0x9F: "f64.sqrt",
    0xD0: "ref.null", 0xD1: "ref.is_null", 0xD2: "ref.func",
}
for op in range(0x28, 0x36):
    NAMES[op] = "load"
for op in range(0x36, 0x3F):
    NAMES[op] = "store"
FC_NAMES = {
    8: "memory.init", 9: "data.drop", 10: "memory.copy", 11: "memory.fill", 12: "table.init",
    13: "elem.drop", 14: "table.copy", 15: "table.grow", 16: "table.size", 17: "table.fill",
}
for i in range(8):
    FC_NAMES[i] = "trunc_sat"


class Reader:
    def __init__(self, data, pos=0):
        self.d, self.p = data, pos

    def byte(self):
        b = self.d[self.p]
        self.p += 1
        return b

    def uleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def sleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result


def blocktype(r):
    b = r.d[r.p]
    if b == 0x40 or b in (0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F):
        r.p += 1
    else:
        r.sleb()


def count_ops(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    r = Reader(data, 8)
    counts = Counter()
    while r.p < len(data):
        sid = r.byte()
        size = r.uleb()
        end = r.p + size
        if sid == 10:
            for _ in range(r.uleb()):
                body_size = r.uleb()
                body_end = r.p + body_size
                for _ in range(r.uleb()):
                    r.uleb()
                    r.byte()
                while r.p < body_end:
                    decode(r, counts)
                counts["functions"] += 1
        r.p = end
    return counts


def decode(r, counts):
    op = r.byte()
    if op == 0xFC:
        sub = r.uleb()
        name = FC_NAMES.get(sub)
        if name is None:
            raise ValueError(f"unknown 0xFC {sub}")
        counts[name] += 1
        if sub in (8, 12, 14):
            r.uleb(); r.uleb()
        elif sub == 10:
            r.uleb(); r.uleb()
        elif sub in (9, 11, 13, 15, 16, 17):
            r.uleb()
        return
    if op in (0x06, 0x07, 0x08, 0x09, 0x0A, 0x18, 0x19, 0x1F) or op >= 0xFB and op != 0xFC:
        raise ValueError(f"unsupported opcode 0x{op:02x} at {r.p - 1}")
    counts[NAMES.get(op, f"0x{op:02x}")] += 1
    if op in (0x02, 0x03, 0x04):
        blocktype(r)
    elif op in (0x0C, 0x0D, 0x10, 0x12, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x3F, 0x40, 0xD2):
        r.uleb()
    elif op == 0x0E:
        for _ in range(r.uleb() + 1):
            r.uleb()
    elif op in (0x11, 0x13):
        r.uleb(); r.uleb()
    elif op == 0x1C:
        for _ in range(r.uleb()):
            r.byte()
    elif 0x28 <= op <= 0x3E:
        align = r.uleb()
        if align & 0x40:
            r.uleb()
        r.uleb()
    elif op in (0x41, 0x42):
        r.sleb()
    elif op == 0x43:
        r.p += 4
    elif op == 0x44:
        r.p += 8
    elif op == 0xD0:
        blocktype(r)


def main(argv):
    require = []
    if len(argv) >= 2 and argv[0] == "--require":
        require = [x for x in argv[1].split(",") if x]
        argv = argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    status = 0
    for path in argv:
        with open(path, "rb") as f:
            counts = count_ops(f.read())
        missing = [x for x in require if counts[x] == 0]
        if require:
            if missing:
                print(f"{path}: missing {', '.join(missing)}", file=sys.stderr)
                status = 1
            else:
                print(f"{path}: " + ", ".join(f"{x}={counts[x]}" for x in require))
        else:
            total = sum(v for k, v in counts.items() if k != "functions")
            print(f"{path}: {counts['functions']} functions, {total} operators")
            for k, v in counts.most_common():
                if k != "functions":
                    print(f"  {k:<22}{v}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
