#!/usr/bin/env bash
# `cargo check --target aarch64-apple-darwin` of the whole workspace (every target), on a Linux
# machine whose rustup cannot download other targets' standard libraries.
#
# - The standard library is built from source (`-Zbuild-std`, allowed on a stable toolchain by
#   RUSTC_BOOTSTRAP=1). Its source comes from Debian's `rust-src` package of exactly this rustc's
#   version (trixie-backports keeps one per Rust release): a .deb of plain files, unpacked into the
#   toolchain's sysroot, nothing installed system-wide.
# - The one C dependency (SQLite, bundled by rusqlite) is compiled by `zig cc` from PyPI's ziglang,
#   which carries macOS's libc headers. cc-rs passes Apple clang's target flags; the wrapper swaps
#   them for zig's.
# Uses its own target dir (removed afterwards unless KEEP_TARGET=1): CI machines are short of disk.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=aarch64-apple-darwin
WORK="${CHECK_MACOS_DIR:-$ROOT/target/check-macos}"
mkdir -p "$WORK"

SYSROOT=$(rustc --print sysroot)
RUST_VERSION=$(rustc --version | awk '{print $2}')
if [[ ! -f "$SYSROOT/lib/rustlib/src/rust/library/std/Cargo.toml" ]]; then
  apt_dir="$WORK/apt"
  mkdir -p "$apt_dir/lists/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" \
    > "$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  apt-get "${apt_opts[@]}" update -q
  deb_version=$(apt-cache "${apt_opts[@]}" madison rust-src | awk -v v="$RUST_VERSION" \
    '$3 ~ "^"v"\\+" {print $3; exit}')
  if [[ -z "$deb_version" ]]; then
    echo "check-macos: Debian has no rust-src of rustc $RUST_VERSION" >&2
    exit 1
  fi
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download "rust-src=$deb_version")
  rm -rf "$apt_dir/x" && dpkg-deb -x "$apt_dir"/rust-src_*.deb "$apt_dir/x"
  src="$SYSROOT/lib/rustlib/src/rust-$RUST_VERSION"
  rm -rf "$src" && cp -a "$apt_dir/x/usr/src/rustc-$RUST_VERSION" "$src"
  ln -sfn "$src" "$SYSROOT/lib/rustlib/src/rust"
fi

python3 -m ziglang version >/dev/null 2>&1 || python3 -m pip install -q ziglang
cc_wrapper="$WORK/zig-cc-macos"
cat > "$cc_wrapper" <<'EOF'
#!/usr/bin/env bash
args=()
skip=0
for a in "$@"; do
  if [[ $skip == 1 ]]; then skip=0; continue; fi
  case "$a" in
    -arch) skip=1 ;;
    -mmacosx-version-min=* | --target=*) ;;
    *) args+=("$a") ;;
  esac
done
exec python3 -m ziglang cc -target aarch64-macos "${args[@]}"
EOF
chmod +x "$cc_wrapper"

RUSTFLAGS="-D warnings" CC_aarch64_apple_darwin="$cc_wrapper" RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0 \
  CARGO_PROFILE_DEV_DEBUG=false CARGO_TARGET_DIR="$WORK/target" \
  cargo check -Zbuild-std=std,panic_abort --target "$TARGET" --workspace --all-targets

[[ "${KEEP_TARGET:-0}" == 1 ]] || rm -rf "$WORK"
