// Package synctest drives 'handoff sync' end to end as a user does: a real
// 'handoff serve' on loopback, devices logged in with the token it prints
// (each with its own config and chunk cache), real ext4 and qcow2 images
// made by mkfs.ext4 and qemu-img from real files, and only the CLI's
// output, JSON and exit codes to judge by. It needs mkfs.ext4 and qemu-img
// ('make deps' installs them), not the VM lab. The binary is $HANDOFF_BIN,
// or one built for the run.
package synctest
