#!/usr/bin/env python3
"""Writes an in-toto Statement v1 with a SLSA Provenance v1 predicate for one binary.

    provenance.py --binary PATH --name NAME --repo-root DIR --target TRIPLE --command CMD
                  --byproduct FILE... --started RFC3339 --finished RFC3339 > statement.json

Subject: the binary's SHA-256. buildDefinition: the source (git commit and its remote), the
package and target, the build command, and as resolvedDependencies the commit, Cargo.lock,
rust-toolchain.toml and the toolchain as `rustc -vV` reports it. internalParameters: the
environment that changes the output (SOURCE_DATE_EPOCH, the path remapping and C flags, in the
form scripts/lib/release-env.sh sets them). Nothing here is signed: a release pipeline signs the
statement (docs/supply-chain.md).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys

BUILD_TYPE = "urn:knative-rs:build-type:release-build:v1"  # docs/supply-chain.md, "Provenance"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(*cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--repo-root", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--byproduct", action="append", default=[])
    ap.add_argument("--started", required=True)
    ap.add_argument("--finished", required=True)
    ap.add_argument("--commit", help="the commit built (default HEAD)")
    args = ap.parse_args()

    root = args.repo_root
    commit = args.commit or run("git", "rev-parse", "HEAD", cwd=root)
    dirty = run("git", "status", "--porcelain", "--untracked-files=no", cwd=root) != ""
    try:
        repo_uri = run("git", "remote", "get-url", "origin", cwd=root)
    except subprocess.CalledProcessError:
        repo_uri = os.environ.get("SOURCE_REPOSITORY", "unknown")
    repo_uri = os.environ.get("SOURCE_REPOSITORY", repo_uri)
    rustc_vv = run("rustc", "-vV", cwd=root)
    rustc_release = next(l.split(": ", 1)[1] for l in rustc_vv.splitlines() if l.startswith("release: "))
    rustc_hash = next(l.split(": ", 1)[1] for l in rustc_vv.splitlines() if l.startswith("commit-hash: "))
    cargo_v = run("cargo", "--version", cwd=root)
    # cargo-auditable has no --version of its own; cargo records what it installed.
    installed = run("cargo", "install", "--list", cwd=root).splitlines()
    auditable_v = next((l.rstrip(":") for l in installed if l.startswith("cargo-auditable v")), None)

    env = {
        k: os.environ[k]
        for k in ("SOURCE_DATE_EPOCH", "CARGO_ENCODED_RUSTFLAGS", "CFLAGS", "CXXFLAGS", "CARGO_INCREMENTAL")
        if k in os.environ
    }
    if "CARGO_ENCODED_RUSTFLAGS" in env:
        env["CARGO_ENCODED_RUSTFLAGS"] = env["CARGO_ENCODED_RUSTFLAGS"].split("\x1f")

    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": args.name, "digest": {"sha256": sha256(args.binary)}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"uri": repo_uri, "digest": {"gitCommit": commit}},
                    "package": args.name,
                    "target": args.target,
                    "profile": "release",
                    "command": args.command,
                },
                "internalParameters": {
                    "environment": env,
                    "sourceTreeDirty": dirty,
                    "cargo": cargo_v,
                    "cargoAuditable": auditable_v,
                },
                "resolvedDependencies": [
                    {"uri": f"git+{repo_uri}@{commit}", "digest": {"gitCommit": commit}},
                    {
                        "name": "Cargo.lock",
                        "digest": {"sha256": sha256(os.path.join(root, "Cargo.lock"))},
                    },
                    {
                        "name": "rust-toolchain.toml",
                        "digest": {"sha256": sha256(os.path.join(root, "rust-toolchain.toml"))},
                    },
                    {
                        "uri": f"pkg:generic/rustc@{rustc_release}",
                        "digest": {"gitCommit": rustc_hash},
                        "annotations": {"rustc -vV": rustc_vv},
                    },
                ],
            },
            "runDetails": {
                "builder": {"id": os.environ.get("PROVENANCE_BUILDER_ID", "local:scripts/sbom")},
                "metadata": {"startedOn": args.started, "finishedOn": args.finished},
                "byproducts": [
                    {"name": os.path.basename(p), "digest": {"sha256": sha256(p)}}
                    for p in args.byproduct
                ],
            },
        },
    }
    json.dump(statement, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
