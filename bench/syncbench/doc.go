// Package syncbench measures the sync engine against rsync and a full zstd
// copy on one machine, the way issue 5 asks: an ext4 image of real files,
// 1% of whose 4 KiB blocks then change.
//
// Run does it all in one go and returns a Table:
//
//  1. MakeImage fills an ext4 image to about 85% with files from /usr by
//     mkfs.ext4 -d; the server pushes it into its own chunk store.
//  2. The workstation pulls it cold over HTTPS (TLS 1.3, pinned
//     certificate, a bearer token, as 'handoff serve' runs) and indexes it.
//  3. ChangeBlocks overwrites 1% of the server's blocks, uniformly at
//     random and seeded, with 4 KiB from real files; ReferenceSize is those
//     new contents through zstd -3, the yardstick for the update. The
//     server pushes the new version.
//  4. The update is pulled by handoff, by rsync -z and rsync from an rsync
//     daemon (onto the old image), and copied whole with zstd -3.
//
// Every transfer crosses 127.0.0.1 through a Proxy that counts bytes at
// the socket in both directions, so TLS, HTTP and rsync's protocol are all
// paid for alike, and every pulled file is compared with the server's byte
// for byte. Each run works in a fresh directory under Config.Dir and
// removes it, and stops every process it started, when it returns: on
// error and when its context ends too.
package syncbench
