#!/bin/sh
# Stub sources for the Dockerfile's dependency layer.
#
# Run in a directory that holds only the workspace's Cargo.toml, Cargo.lock
# and each member's Cargo.toml. It creates an empty src/lib.rs for every
# member and an empty `fn main() {}` for every target a manifest declares
# ([[bin]], [[bench]], [[test]], [[example]], at its `path` or where Cargo
# looks for it), so `cargo build --locked` compiles every dependency while
# the project's own code is not there yet. The Dockerfile then copies the
# real sources over the stubs. tests/tests/deploy_dockerfile.rs runs this
# script on a copy of the manifests and checks that Cargo accepts the result.
set -eu

members=$(sed -n 's/^members *= *\[\(.*\)\]/\1/p' Cargo.toml | tr -d '",')
[ -n "$members" ] || { echo "stub-workspace.sh: no members = [...] line in Cargo.toml" >&2; exit 1; }

for member in $members; do
  manifest="$member/Cargo.toml"
  [ -f "$manifest" ] || { echo "stub-workspace.sh: $manifest missing" >&2; exit 1; }
  mkdir -p "$member/src"
  : > "$member/src/lib.rs"
  # One line per declared target: "<kind> <name> <path or ->".
  awk '
    function flush() { if (kind != "") print kind, name, (path == "" ? "-" : path); kind = "" }
    /^\[\[(bin|bench|test|example)\]\]/ { flush(); kind = $0; gsub(/[][]/, "", kind); name = ""; path = ""; next }
    /^\[/ { flush(); next }
    kind != "" && /^name *=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); name = v }
    kind != "" && /^path *=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); path = v }
    END { flush() }
  ' "$manifest" | while read -r kind name path; do
    if [ "$path" = "-" ]; then
      case "$kind" in
        bin) path="src/bin/$name.rs" ;;
        bench) path="benches/$name.rs" ;;
        test) path="tests/$name.rs" ;;
        example) path="examples/$name.rs" ;;
      esac
    fi
    mkdir -p "$(dirname "$member/$path")"
    echo 'fn main() {}' > "$member/$path"
  done
done
