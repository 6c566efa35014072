// Package syncengine stores disk images and checkpoints as content-addressed
// chunks, so that a checkout sends only what the workstation lacks, a
// checkpoint only what changed, and every byte is verified.
//
// An image is cut into fixed, aligned chunks (DefaultChunkSize): disk
// images change in place, block by block, so aligned chunks keep unchanged
// blocks' chunks identical without the cost of content-defined cutting.
// Each chunk is named by its BLAKE3 hash; chunks of zeroes are named by the
// zero Hash and never stored or sent, and a pulled image keeps them as
// holes. The Manifest lists the chunk names in order and its own hash, the
// root, names the whole image (a two-level Merkle tree).
//
// Chunks are packed with zstd where that saves at least a sixteenth. A
// Store holds packed objects by hash: DirStore on disk (written to a temp
// file, synced, renamed: an object is whole or absent), and HTTPStore, a
// client of Handler, which the home server mounts under /v1/chunks/ behind
// its device tokens. Push asks the store in batches which chunks it has and
// sends the rest in parallel; Pull takes chunks from the local cache first,
// fetches the rest, verifies every one (fetching a corrupt one once more),
// keeps them in the cache (so a cut pull resumes), and replaces the target
// file only when the whole image is written and synced.
package syncengine
