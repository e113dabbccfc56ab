//! End-to-end tests: real `halite-master` and `halite-agent` processes on
//! 127.0.0.1, real files, events read from the master's publisher.

mod apply;
mod beacons;
mod bus;
mod drift;
mod faults;
mod full_disk;
mod hardening;
mod interop;
mod interrupted_restores;
mod kinds;
mod link;
mod local_attack;
mod reactors;
mod reload;
mod restart;
mod states;
mod swarm;
