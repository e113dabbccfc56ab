#!/usr/bin/env bash
# Builds the Debian packages target/debian/halite-{master,agent}_*.deb:
# release binaries, then the man pages and completions that the packaging
# tool halite-manual (crates/manual, not shipped) generates from their clap
# definitions (into packaging/generated, a build output that git ignores),
# then `cargo deb` on each crate with its [package.metadata.deb].
# Debug info goes into separate halite-*-dbgsym .ddeb packages.
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p halite-master -p halite-agent

rm -rf packaging/generated
# A debug build: the tool only formats text, and CI has built the debug
# libraries already for the tests.
cargo run --locked --quiet -p halite-manual -- packaging/generated

mkdir -p target/debian
rm -f target/debian/halite-master*_*.*deb target/debian/halite-agent*_*.*deb
for package in halite-master halite-agent; do
    cargo deb --no-build --dbgsym -p "$package" --output target/debian/
done
ls -l target/debian/halite-*deb
