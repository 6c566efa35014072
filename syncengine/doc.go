// Package syncengine stores disk images and checkpoints as content-addressed
// chunks, so that a checkout sends only what the workstation lacks, a
// checkpoint only what changed, and every byte is verified.
//
// # Images
//
// An image is cut into fixed, aligned chunks (DefaultChunkSize, 64 KiB):
// disk images change in place, block by block, so aligned chunks keep the
// unchanged blocks' chunks identical, which content-defined cutting would
// only approximate at a higher cost. Each chunk is named by its BLAKE3
// hash; chunks of zeroes have the zero Hash and are never stored or sent,
// and a pulled image keeps them as holes. The chunk names form a Merkle
// tree: nodes of 1024 names, and a root object that holds the image's size,
// its chunk size and its nodes' names. The root's hash names the image.
//
// # Stores
//
// Objects (chunks, nodes, roots) are packed with zstd where that saves at
// least a sixteenth (Codec). The home server keeps them in a DirStore, a
// file per object: a batch is written to temporary files, made durable
// with one syncfs, and renamed into place, so an object is whole or
// absent, and a tree is stored only after every chunk it names, so a
// stored tree is always whole. A workstation's cache appends them to pack
// files with an index, unsynced: every object is verified when read, and
// one a crash tore is dropped and fetched again.
//
// # Transfers
//
// A Client moves images between files, its cache and a Remote: the home
// server (HTTPStore, a client of Handler, which `handoff serve` mounts
// under /v1/chunks/ behind its device tokens) or a directory (DirStore,
// which runs the same protocol in-process). The cache remembers which tree
// it last moved for each file path. The next transfer of that path names
// it as its base: tree nodes and changed chunks then travel as patches
// against their counterparts in the base, so a scattered 4 KiB change costs
// about 4 KiB, not a chunk. Every answer is one zstd stream of records, so
// a batch of changes compresses as well as the changes alone would.
//
// The caller's contract:
//
//  1. Push(path) indexes the file, asks the remote which chunks it lacks,
//     and sends those, then the tree. The remote verifies every chunk
//     against the tree and stores the tree last. A file that changes during
//     the push is refused: push a snapshot.
//  2. Pull(root, path) fetches the tree, takes every chunk it can from the
//     cache and fetches the rest in parallel batches, verifying each.
//     Fetched chunks go into the cache at once, so a pull that was cut
//     short resumes without fetching them again. A damaged or cut answer is
//     asked for again (twice); a chunk the server itself holds damaged is
//     a final error. path is replaced only by a whole, synced image.
//  3. GC(keep) removes what none of the kept trees uses.
//
// # The server's own disk
//
// Images works on the home server beside its store (`handoff serve`
// mounts its Handler under /v1/disks/; ImagesClient asks it): Index
// stores an image or chain from the server's disk straight into the
// store, packing and writing only the chunks the store lacks; Checkout
// writes a root from the store to the server's disk as PullChain does,
// every chunk from the store or in place, and refuses a file a running
// QEMU holds locked. Both stay inside the folders the server was given
// (--images), symlinks and ".." resolved.
package syncengine
