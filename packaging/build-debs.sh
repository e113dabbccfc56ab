#!/usr/bin/env bash
# Builds the Debian packages target/debian/halite-{master,agent}_*.deb:
# release binaries, then the man pages and completions they generate from
# their clap definitions (into target/manual, a build output), then
# `cargo deb` on each crate with its [package.metadata.deb].
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p halite-master -p halite-agent
release="${CARGO_TARGET_DIR:-target}/release"

# The crates' asset lists name target/manual relative to the repository.
rm -rf target/manual
"$release/halite-master" --generate-manual target/manual
"$release/halite-agent" --generate-manual target/manual

mkdir -p target/debian
rm -f target/debian/halite-master_*.deb target/debian/halite-agent_*.deb
for package in halite-master halite-agent; do
    cargo deb --no-build -p "$package" --output target/debian/
done
ls -l target/debian/halite-*.deb
