//! End-to-end tests: real `halite-master` and `halite-agent` processes on
//! 127.0.0.1, real files, events read from the master's publisher.

// Test code outside `#[test]` functions (helpers, a bench): a panic is a
// failed test, which is what `unwrap` says here.
#![allow(clippy::unwrap_used)]

mod api;
mod api_certs;
mod apply;
mod beacons;
mod bus;
mod check;
mod cluster_control;
mod cluster_events;
mod cluster_facts;
mod cluster_failover;
mod cluster_faults;
mod cluster_route;
mod cluster_shared;
mod dashboard;
mod drift;
mod durability;
mod exposure;
mod faults;
mod fleet_commands;
mod full_disk;
mod hardening;
mod interop;
mod interrupted_restores;
mod kinds;
mod last_hour;
mod link;
mod link_flood;
mod local_attack;
mod observe;
mod operator;
mod pg_store;
mod reactors;
mod recurse_templates;
mod reload;
mod restart;
mod salt_reference;
mod salt_system;
mod salt_tree;
mod schedule;
mod states;
mod swarm;
mod trust;
mod url_sources;
