// Package checkout owns one VM's trip to this machine and back: the
// image's lease, its disks, the live migration there, the hand back, and
// the lease's release. One checkout, one owner: the UI only draws its
// events (package event, a leaf that needs neither libvirt nor the lease
// client) and sends it the user's commands.
//
// The core (core.go) is a pure function, Step(state, input, now), that
// returns the next state and the actions the driver must perform; it holds
// no goroutines, does no I/O and is handed the time. Its phases: connecting,
// on the server (or viewing, for a view only), taking the lease, moving
// disks, copying (pre-copy), switching (post-copy), running here, handing
// back, back on the server, failed, aborted. A read-only checkout takes no
// lease. Commands that do not fit the state are refused with why.
//
// The driver (Checkout.Run) is one loop that, for each input:
//  1. steps the core, replying to the command that asked, if any;
//  2. performs the actions in order, each one that waits in a goroutine of
//     its own whose answer comes back to the loop as the next input;
//  3. offers the oldest undelivered event to the subscriber, never waiting
//     for it: phase events are all kept, and an unread progress report is
//     replaced by a newer one.
//
// The lease is renewed by a goroutine the driver owns; the work of a move
// here (disks, migration, settling) runs under a context that is cancelled
// when the lease is lost, or expires because renewals stopped landing. The
// disks move through a DiskMover, called around each migration: Prepare
// before it, Finish after the switch, Undo after an abort or a failure.
// When Run's context ends, the checkout quits (aborting a move before its
// switch, finishing one past it), and after Config.Grace the I/O left is
// cancelled; Run returns once every goroutine it started has ended.
package checkout
