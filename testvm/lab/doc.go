// Package lab makes the built-in two-host lab on this machine: a "server"
// and a "workstation", each a network namespace with its own libvirt daemon
// run by its own system user, joined by a veth link that tc shapes to a
// bandwidth and round-trip time, and the test guest (package testvm)
// running on the server.
//
// The server also runs 'handoff serve' (Config.Handoff), its leases and
// chunk store, with the workstation logged in: LeaseClient and ChunkStore
// reach it as the workstation does, over connections WorkstationDial makes
// inside the workstation's namespace, so their bytes cross the shaped link
// and show in LinkCounts.
//
// Everything the lab makes is listed in its state file (Dir/lab.json) and
// named with the "handoff-" prefix; Down removes all of it, and is safe to
// run any number of times, also after a crash halfway through Up.
//
// Root is needed: namespaces, users and tc are the machine's.
package lab
