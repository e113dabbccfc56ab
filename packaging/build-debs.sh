#!/usr/bin/env bash
# Builds the Debian packages target/debian/halite-{master,agent}_*.deb:
# release binaries, then the man pages and completions that the packaging
# tool halite-manual (crates/manual, not shipped) generates from their clap
# definitions (into packaging/generated, a build output that git ignores),
# then `cargo deb` on each crate with its [package.metadata.deb].
# Debug info goes into separate halite-*-dbgsym .ddeb packages; the agent
# is built with the `release-agent` profile.
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p halite-master
# The agent with the `release-agent` profile (Cargo.toml: fat LTO, one
# codegen unit, opt-level "s"): less code mapped, so an idle agent stays
# within its 8 MiB (check-debs.sh checks it). About 3.5 min of one core on
# top of the master's build; cargo-deb's --profile below maps the asset
# `target/release/halite-agent` to `target/release-agent/`.
cargo build --profile release-agent --locked -p halite-agent

rm -rf packaging/generated
# A debug build: the tool only formats text, and CI has built the debug
# libraries already for the tests.
cargo run --locked --quiet -p halite-manual -- packaging/generated

mkdir -p target/debian
rm -f target/debian/halite-master*_*.*deb target/debian/halite-agent*_*.*deb
# --dbgsym: the shipped binaries carry no debug info (a few MB on disk);
# it goes, by build id, into halite-*-dbgsym_*.ddeb (/usr/lib/debug/.build-id/),
# which gdb and backtraces find when it is installed.
cargo deb --no-build --dbgsym -p halite-master --output target/debian/
cargo deb --no-build --dbgsym --profile release-agent -p halite-agent --output target/debian/
ls -l target/debian/halite-*deb
