// Package diskbench measures how handoff moves the lab's Debian desktop
// guest with its disk, against 'virsh migrate --copy-storage-all', on the
// built-in lab (package lab) at each of a few link rates: a first grab
// (cold: a fresh chunk cache and nothing on the workstation), a hand back,
// a second grab (cache and the workstation's file kept), a hand back, and
// virsh's full copy into an empty file, brought home by a hand back.
//
// Bytes are counted at the workstation's end of the lab link: the memory
// stream apart (its TCP port is fixed for the bench, so a counter in the
// workstation's namespace tells it from the rest), and the rest as the
// disk's, whichever way it travels (the chunk store over TLS, NBD). The
// yardsticks are zstd -3 of the image's nonzero blocks for a cold copy, and
// of the blocks that changed between the two grabs for the second.
//
// It lives apart from the lab and the engines it measures, as the memory
// bench (migrationbench) and the sync bench do. It is its own package, not
// rows of migrationbench, because it drives another guest through the
// handoff command itself (as a user's script would, disks and all) and
// keeps other columns; a Row here is one move, as there.
package diskbench
