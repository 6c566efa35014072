// Package nattest checks, end to end on a lab whose workstation sits
// behind NAT, that handoff run on the workstation reaches the server over
// qemu+ssh and moves the VM both ways through its own SSH connection, with
// no port open on the workstation. Its tests need root and the real lab.
package nattest
