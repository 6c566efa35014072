// Package leasectl keeps a VM image running in one place at a time: the
// home server holds a time-limited lease per image and the image's history
// of commits (consistent checkpoints), and every commit is fenced by the
// epoch of the lease that allows it.
//
// The state machine (State: Acquire, Renew, Release, Steal, Checkout,
// Commit, Branch) is a plain function of the image's state, the time and
// the request. A Store applies it atomically: BoltStore in one bbolt
// transaction per change (kill -9 safe), EtcdStore in one etcd transaction
// that compares the revision it read, for users with several servers; on
// etcd the lease is also an etcd lease, kept alive by renewals. Each
// commit and event is a record of its own, so a change writes only what
// it adds however long the history. A manifest is bounded (root 128 bytes,
// metadata 32 keys and 16 KiB): it names content, it does not carry it.
//
// Service adds the clock and IDs; Handler serves it as HTTP/JSON under
// /v1/images/, behind RequireToken (one bearer token per device, only
// hashes kept), over TLS with a self-signed certificate that clients pin
// by fingerprint. Other APIs of the home server (the chunk store) mount
// on the same listener behind the same tokens: ServeConfig.Mounts.
// Keeper holds a lease for a running VM, renewing it until it is lost.
//
// A commit from a lease that expired or was stolen, or from a read-only
// checkout, is accepted only if no commit happened since and no lease is
// outstanding; otherwise it is refused with ErrRefused and the client saves
// the same state as a new image branched from its parent: work is never
// silently overwritten, and never lost.
package leasectl
