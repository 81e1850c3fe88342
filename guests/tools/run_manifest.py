#!/usr/bin/env python3
"""Run the workload suite with a wasmtime CLI (no dependencies but python3).

    run_manifest.py [check]   run every entry at its small size; compare stdout with
                              expected/<name>.stdout, and the outcome with `expect`
    run_manifest.py update    the same, but (re)write the expected/*.stdout files
    run_manifest.py bench [-n RUNS]
                              time every entry at its bench size, and at size 0 (the
                              "floor": CLI start-up + compilation), best of RUNS; the
                              difference estimates the guest's own run time
Options: --wasmtime PATH (else $WASMTIME, else `wasmtime` on PATH), --only NAME[,NAME].
The CLI compiles the module on each run, so wall times include compilation; CPU
times (user+sys of the child) are less disturbed by other load on the machine.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# wasmtime::Trap variant -> text the CLI prints for it
TRAP_TEXT = {
    "MemoryOutOfBounds": "out of bounds memory access",
    "UnreachableCodeReached": "wasm `unreachable` instruction executed",
    "IntegerDivisionByZero": "integer divide by zero",
}


def run(wasmtime, wasm, args):
    """Run once; return (exit code, stdout bytes, stderr text, wall seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([wasmtime, "run", "--", wasm, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    return p.returncode, out, err.decode(errors="replace"), wall


def cpu_children():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def outcome_ok(entry, code, err):
    if entry["expect"] == "exit0":
        return code == 0, f"exit code {code}" + (f": {err.strip()[-300:]}" if code else "")
    want = TRAP_TEXT.get(entry.get("trap", ""), "wasm trap")
    ok = code != 0 and want in err
    return ok, f"exit code {code}, trap text {'found' if want in err else 'missing'}: {want!r}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="check", choices=["check", "update", "bench"])
    ap.add_argument("--wasmtime", default=os.environ.get("WASMTIME") or shutil.which("wasmtime"))
    ap.add_argument("--only", default="")
    ap.add_argument("-n", type=int, default=5)
    a = ap.parse_args()
    if not a.wasmtime:
        sys.exit("no wasmtime CLI: pass --wasmtime or set $WASMTIME")
    manifest = json.load(open(os.path.join(ROOT, "manifest.json")))
    only = set(x for x in a.only.split(",") if x)
    failures = 0
    for e in manifest:
        if only and e["name"] not in only:
            continue
        wasm = os.path.join(ROOT, e["wasm"])
        if a.mode in ("check", "update"):
            code, out, err, wall = run(a.wasmtime, wasm, e["small_args"])
            ok, why = outcome_ok(e, code, err)
            path = os.path.join(ROOT, e["stdout_small"])
            if ok and a.mode == "update":
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(out)
            same = os.path.exists(path) and open(path, "rb").read() == out
            status = "ok" if ok and same else "FAIL"
            failures += status != "ok"
            print(f"{status:4} {e['name']:<17} {' '.join(e['small_args']):<18} {wall * 1000:7.1f} ms"
                  + ("" if ok else f"  outcome: {why}") + ("" if same else "  stdout differs"))
        else:
            floor_args = ["0"] + e["bench_args"][1:]
            best = {}
            for label, args in (("floor", floor_args), ("bench", e["bench_args"])):
                walls, cpus = [], []
                for _ in range(a.n):
                    c0 = cpu_children()
                    code, out, err, wall = run(a.wasmtime, wasm, args)
                    cpus.append(cpu_children() - c0)
                    walls.append(wall)
                    ok, why = outcome_ok(e, code, err)
                    if not ok:
                        print(f"FAIL {e['name']} {args}: {why}")
                        failures += 1
                        break
                best[label] = (min(walls) * 1000, min(cpus) * 1000)
            (fw, fc), (bw, bc) = best["floor"], best["bench"]
            print(f"{e['name']:<17} {' '.join(e['bench_args']):<22} wall {bw:7.1f} ms (floor {fw:6.1f}, run ~{bw - fw:6.1f})"
                  f"   cpu {bc:7.1f} ms (floor {fc:6.1f}, run ~{bc - fc:6.1f})")
    if a.mode != "bench":
        print(f"{sum(1 for e in manifest if not only or e['name'] in only) - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
