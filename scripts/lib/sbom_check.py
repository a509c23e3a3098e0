#!/usr/bin/env python3
"""Checks a CycloneDX SBOM against what is really linked into one binary.

    sbom_check.py --sbom FILE --package NAME --target TRIPLE [--manifest-path Cargo.toml]
                  [--binary PATH]

"Linked" is `cargo tree -p NAME -e normal,no-proc-macro --target TRIPLE --locked`: the crates
compiled into the binary when it is built alone (as scripts/release-build builds it), without
build scripts' dependencies, proc-macros or dev-dependencies. Every one of them must appear in the
SBOM with the version Cargo.lock locks, and every crates.io component of the SBOM must be a
version Cargo.lock locks. With --binary, the dependency list cargo-auditable embedded in the
binary (`.dep-v0` section) is checked the same way: it must name every linked crate at its
locked version (it may name more: cargo-auditable also records proc-macros and the crates that
features unified across the workspace would add).

Exit 0 with a one-line summary, or exit 1 with one line per missing or mismatched crate.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import zlib


def fail(msg):
    print(f"sbom-check: {msg}", file=sys.stderr)
    sys.exit(1)


def locked_versions(lock_path):
    """{name: {version, ...}} for every package in Cargo.lock."""
    try:
        with open(lock_path, "rb") as f:
            lock = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"cannot read {lock_path}: {e}")
    out = {}
    for p in lock.get("package", []):
        out.setdefault(p["name"], set()).add(p["version"])
    return out


def linked_crates(manifest, package, target):
    """{(name, version)} linked into `package`'s binary, per `cargo tree`."""
    cmd = [
        "cargo", "tree", "--manifest-path", manifest, "--locked", "--offline",
        "-p", package, "-e", "normal,no-proc-macro", "--target", target,
        "--prefix", "none", "--format", "{p}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"{' '.join(cmd)} failed:\n{res.stderr}")
    crates = set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].startswith("v"):
            continue
        crates.add((parts[0], parts[1][1:]))
    if not crates:
        fail(f"cargo tree listed no crate for {package}")
    return crates


def sbom_components(path):
    """{(name, version)} of every component in a CycloneDX JSON document, nested ones too."""
    try:
        with open(path, encoding="utf-8") as f:
            bom = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"cannot read SBOM {path}: {e}")
    if bom.get("bomFormat") != "CycloneDX":
        fail(f"{path} is not a CycloneDX document (bomFormat={bom.get('bomFormat')!r})")
    found = set()

    def walk(comp):
        if comp.get("name") and comp.get("version"):
            found.add((comp["name"], comp["version"]))
        for c in comp.get("components", []):
            walk(c)

    if "component" in bom.get("metadata", {}):
        walk(bom["metadata"]["component"])
    for c in bom.get("components", []):
        walk(c)
    return found


def auditable_crates(binary):
    """{(name, version)} of the runtime packages in the binary's cargo-auditable `.dep-v0`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "dep-v0")
        res = subprocess.run(
            ["objcopy", "--dump-section", f".dep-v0={out}", binary, os.path.join(tmp, "copy")],
            capture_output=True, text=True,
        )
        if res.returncode != 0 or not os.path.exists(out):
            fail(f"{binary} has no cargo-auditable .dep-v0 section ({res.stderr.strip()})")
        with open(out, "rb") as f:
            data = json.loads(zlib.decompress(f.read()))
    return {
        (p["name"], p["version"])
        for p in data["packages"]
        if p.get("kind", "runtime") == "runtime"
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbom", required=True)
    ap.add_argument("--package", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--manifest-path", default="Cargo.toml")
    ap.add_argument("--binary")
    args = ap.parse_args()

    lock = locked_versions(os.path.join(os.path.dirname(os.path.abspath(args.manifest_path)), "Cargo.lock"))
    linked = linked_crates(args.manifest_path, args.package, args.target)
    sbom = sbom_components(args.sbom)
    sbom_names = {}
    for name, version in sbom:
        sbom_names.setdefault(name, set()).add(version)

    errors = []
    for name, version in sorted(linked):
        if version not in lock.get(name, set()):
            errors.append(f"{name} {version} linked into {args.package} is not in Cargo.lock")
        if (name, version) not in sbom:
            have = ", ".join(sorted(sbom_names.get(name, []))) or "absent"
            errors.append(
                f"{name} {version} (Cargo.lock) is linked into {args.package} but its SBOM "
                f"{args.sbom} has {name}: {have}"
            )
    for name, version in sorted(sbom):
        if name in lock and version not in lock[name]:
            errors.append(
                f"SBOM {args.sbom} lists {name} {version}, Cargo.lock locks "
                f"{', '.join(sorted(lock[name]))}"
            )
    embedded = None
    if args.binary:
        embedded = auditable_crates(args.binary)
        for name, version in sorted(linked - embedded):
            errors.append(f"{name} {version} is linked into {args.binary} but missing from its .dep-v0 list")
        for name, version in sorted(embedded):
            if version not in lock.get(name, set()):
                errors.append(f"{args.binary}'s .dep-v0 list names {name} {version}, which Cargo.lock does not lock")
    if errors:
        for e in errors:
            print(f"sbom-check: {e}", file=sys.stderr)
        sys.exit(1)
    extra = ""
    if embedded is not None:
        # cargo-auditable also lists proc-macros and crates that only features unified across the
        # workspace would pull in: a superset, which is what a vulnerability scanner wants.
        extra = (f", and in its embedded .dep-v0 list ({len(embedded)} entries, "
                 f"{len(embedded - linked)} of them compile-time or workspace-feature only)")
    print(f"sbom-check: {args.package}: all {len(linked)} linked crates in {os.path.basename(args.sbom)} "
          f"at their locked versions{extra}")


if __name__ == "__main__":
    main()
