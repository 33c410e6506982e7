# Shared by scripts/test, scripts/soak and scripts/perf (sourced, not run).

# Where cargo puts what it builds: ./target, or CARGO_TARGET_DIR, or
# build.target-dir from a cargo config. Asked of cargo itself, so that every
# way of moving it is honoured.
target_dir() {
  local dir
  dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [[ -n $dir ]] || { echo "cannot learn cargo's target directory (cargo metadata)" >&2; return 1; }
  printf '%s\n' "$dir"
}

# Builds the debug binaries (`chatterpro`, `chatterpro-bench`) as
# `cargo test --workspace --all-targets` builds them, into
# <target>/debug/. The same command, not `cargo build --bin …`: with the
# tests' dev-dependencies in the build, cargo enables more features of
# shared crates (hyper's client, syn's defaults, …), and a plain
# `cargo build` would recompile ~40 crates and both binaries that the test
# build has just made. After `cargo test` this compiles nothing.
build_debug() {
  cargo test --workspace --all-targets --no-run --quiet
}
