#!/usr/bin/env bash
# Rebuild every workload guest for wasm32-wasip1 and copy the modules to
# guests/wasm/<name>.wasm. Idempotent; runnable from any directory.
#   ./build.sh            build and copy
#   ./build.sh --check    also fail if a copied module differs from the committed one
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip1
check=0
[ "${1:-}" = "--check" ] && check=1

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi

# Flags are set here (not in a .cargo/config.toml, which depends on the cwd):
# - bulk memory is the rustc default for wasm32-wasip1; spelled out so the
#   bulkmem guest keeps memory.copy / memory.fill if that default changes;
# - path remapping keeps local paths (cargo home, checkout) out of the panic
#   strings baked into the modules, so a rebuild elsewhere gives the same bytes.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
sep=$'\x1f'
export CARGO_ENCODED_RUSTFLAGS="-Ctarget-feature=+bulk-memory${sep}--remap-path-prefix=${cargo_home}=/cargo${sep}--remap-path-prefix=${here}=/guests"
unset RUSTFLAGS

locked=()
[ -f "$here/Cargo.lock" ] && locked=(--locked)
cargo build --release --target "$target" \
    --manifest-path "$here/Cargo.toml" --target-dir "$here/target" "${locked[@]}"

mkdir -p "$here/wasm"
changed=0
for dir in "$here"/*/; do
    name="$(basename "$dir")"
    [ -f "$dir/src/main.rs" ] || continue
    src="$here/target/$target/release/$name.wasm"
    dst="$here/wasm/$name.wasm"
    if ! cmp -s "$src" "$dst"; then
        cp "$src" "$dst"
        echo "updated wasm/$name.wasm ($(wc -c <"$dst") bytes)"
        changed=1
    fi
done

# bulkmem must really use the bulk-memory opcodes (0xFC 0x0A memory.copy,
# 0xFC 0x0B memory.fill).
if command -v wasm-tools >/dev/null 2>&1; then
    text="$(wasm-tools print "$here/wasm/bulkmem.wasm")"
    grep -q 'memory.copy' <<<"$text" && grep -q 'memory.fill' <<<"$text" \
        || { echo "bulkmem.wasm lacks memory.copy/memory.fill" >&2; exit 1; }
else
    python3 "$here/tools/wasmops.py" --require memory.copy,memory.fill "$here/wasm/bulkmem.wasm"
fi

if [ "$check" = 1 ] && [ "$changed" = 1 ]; then
    echo "modules differ from the committed ones" >&2
    exit 1
fi
echo "guests: $(ls "$here"/wasm/*.wasm | wc -l) modules in $here/wasm"
