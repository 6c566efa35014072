// Package libvirt drives live migrations between two libvirt hosts.
//
// It stands on github.com/digitalocean/go-libvirt and adds what handoff
// needs: URIs checked before dialing with errors that say what to fix,
// contexts on every call that waits, progress as switchover.Sample values,
// and a migration driver that lets the switchover policy decide when the
// VM switches hosts. go-libvirt's types never leave this package.
//
// Contract of a migration (see Start):
//  1. The VM runs on the source until the switch; an abort or a cancelled
//     context before the switch leaves it running there.
//  2. After post-copy starts the VM runs on the destination and the job can
//     no longer be aborted: it is finished instead.
//  3. Every Migration is driven by one goroutine that Start makes and that
//     ends when the job ends; Wait returns its result.
//
// The data path. handoff drives migrations peer-to-peer by default: the
// source's libvirtd opens the destination URI and QEMU streams memory to the
// address in MigrateURI. When only the workstation can open connections (a
// laptop behind NAT reaching its home server over SSH), Options.Tunnel names a
// listener on the source host that forwards to the destination, such as an
// SSH remote forward the workstation opened (see README.md).
package libvirt
