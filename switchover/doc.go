// Package switchover decides when a live migration should stop copying and
// switch execution to the destination.
//
// It is a pure function of its inputs: a Config and the recent Samples of a
// job (the time included, as each sample's Elapsed). It owns no timers,
// sockets or goroutines; the libvirt package polls the job, feeds samples in,
// and carries out the Decision.
package switchover
