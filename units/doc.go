// Package units writes byte counts and rates for people and reads the
// link rates people type ("20mbit", "1gbit").
//
// It is a leaf: it imports only the standard library, so the switchover
// policy, the terminal app, the commands, the lab and the benchmarks can
// all speak the same words without any of them importing another for a
// formatter (a benchmark that reached into the switchover policy for one
// pulled libvirt's packages into the chunk store's build graph).
//
// Everything here is decimal, as link speeds are: 1 MB is 10^6 bytes.
package units
