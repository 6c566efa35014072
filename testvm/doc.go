// Package testvm builds the tiny test guest every lab and end-to-end test
// runs: Debian's kernel (one exact linux-image package, fetched with
// apt-get download), busybox-static, and a small static Go agent
// (./guestagent) in an initramfs written by this package. Build caches the
// result under the user's cache directory, keyed by its inputs, so only a
// new kernel package, busybox, agent or init script rebuilds it.
//
// The guest talks on its serial console, one line per event, each line
// prefixed so kernel messages never confuse a reader:
//
//	handoff-guest tick=17 uptime=17.02 dirtied_mb=34 integrity ok
//	handoff-guest tick=18 uptime=18.02 dirtied_mb=36 integrity FAIL page 1234 has generation 3, want 4
//	handoff-guest key="a"
//
// A tick comes every second. "integrity ok" means the region the agent
// wrote once still has its checksum and every page of the working set it
// dirties still holds the last generation written to it: after a migration
// this proves that no page, early or late, was lost. A key line carries the
// bytes read from the guest's VGA console (/dev/tty1), Go-quoted, so tests
// of keyboard forwarding can read what arrived. The screen shows the tick
// as a counter several lines tall, so a VNC view visibly lives.
//
// The kernel command line (Params.KernelArgs) sets how much memory the
// agent dirties: handoff.dirty=MB/s over handoff.wss=MB, with content like
// a desktop's: mostly code and text (copies of its own binaries), some zero
// pages, some random bytes. Typing "#corrupt" on the console damages the
// once-written region on purpose, so tests can prove FAIL is reachable.
//
// ParseSerialLog reads such a log back into a Status.
package testvm
