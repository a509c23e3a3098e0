# Sourced by scripts/release-build (and so by check-reproducible, sbom and the Dockerfiles): the
# environment that makes a release build independent of where and when it runs.
#
#   REPO_ROOT           the checkout (set by the caller)
#   SOURCE_DATE_EPOCH   kept if set; otherwise the commit time of HEAD. Nothing in the binaries
#                       carries a time; the SBOMs and provenance statements use this one.
#   CARGO_ENCODED_RUSTFLAGS  --remap-path-prefix for the checkout (/knative-rs), $CARGO_HOME (/cargo)
#                       and the toolchain's sysroot (/rust): debug info and panic locations name
#                       these fixed prefixes, never the build machine's paths. Plus
#                       -Ctarget-feature=+crt-static: static-pie binaries (glibc, libgcc and libm
#                       linked in; still position-independent, RELRO and BIND_NOW). A start then
#                       skips the dynamic loader's work (opening and mapping libc, libm and
#                       libgcc_s, binding their symbols, libgcc_s's CPUID probing): queue-proxy
#                       start to the first proxied 200 0.5 ms less CPU (2.61 -> 2.13 ms) and 37
#                       fewer page faults (medians of 25 alternating starts), idle RSS 7.0 -> 5.9
#                       MB (docs/supply-chain.md "Images"). The flags reach only the target's
#                       crates (release-build passes --target): build scripts and proc macros
#                       stay dynamic, as rustc cannot build a proc macro with crt-static.
#   CFLAGS, CXXFLAGS    the same remapping for C code built by build scripts (ring).
#   RELEASE_TARGET      the target triple, the host's unless set.
# Any RUSTFLAGS / CARGO_ENCODED_RUSTFLAGS / CFLAGS / CXXFLAGS from the caller are replaced, not extended:
# they would change the binary.

release_env_die() {
  echo "release-build: $*" >&2
  exit 1
}

[ -n "${REPO_ROOT:-}" ] || release_env_die "REPO_ROOT is not set"
case "$REPO_ROOT${CARGO_HOME:-$HOME}" in
  *[[:space:]]*) release_env_die "the checkout and CARGO_HOME paths must not contain white space (CFLAGS cannot quote them)" ;;
esac

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$REPO_ROOT" log -1 --format=%ct 2>/dev/null) ||
    release_env_die "SOURCE_DATE_EPOCH is not set and $REPO_ROOT is not a git checkout"
fi
case "$SOURCE_DATE_EPOCH" in
  '' | *[!0-9]*) release_env_die "SOURCE_DATE_EPOCH must be a number of seconds, got '$SOURCE_DATE_EPOCH'" ;;
esac
export SOURCE_DATE_EPOCH

release_cargo_home=${CARGO_HOME:-$HOME/.cargo}
release_sysroot=$(rustc --print sysroot) || release_env_die "rustc not found"
RELEASE_TARGET=${RELEASE_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
export RELEASE_TARGET

# One --remap-path-prefix per spelling of each directory (as given and with symlinks resolved):
# rustc sees whichever spelling cargo passes it.
release_remap=()
release_cmap=()
release_add_remap() {
  local from=$1 to=$2 real
  real=$(cd "$from" 2>/dev/null && pwd -P) || real=$from
  for p in "$from" "$real"; do
    case " ${release_remap[*]} " in *" --remap-path-prefix=$p=$to "*) continue ;; esac
    release_remap+=("--remap-path-prefix=$p=$to")
    release_cmap+=("-ffile-prefix-map=$p=$to")
  done
}
release_add_remap "$release_sysroot" /rust
release_add_remap "$release_cargo_home" /cargo
release_add_remap "$REPO_ROOT" /knative-rs

unset RUSTFLAGS CARGO_BUILD_RUSTFLAGS
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; echo "${release_remap[*]}"$'\x1f'"-Ctarget-feature=+crt-static")
CFLAGS="${release_cmap[*]}"
CXXFLAGS=$CFLAGS
export CARGO_ENCODED_RUSTFLAGS CFLAGS CXXFLAGS
export CARGO_INCREMENTAL=0
