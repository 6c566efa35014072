// Package event is what a checkout tells its UI: the phases of a VM's
// trip, the migration's and the disks' progress, the lease, and where the
// VM's screen is. It is a leaf: a UI that draws these needs neither
// libvirt nor the lease client.
package event

import (
	"context"
	"net"
	"time"

	"github.com/handoff-dev/handoff/switchover"
)

// Phase is where a checkout stands, as the user sees it.
type Phase string

const (
	Connecting  Phase = "connecting"
	Viewing     Phase = "viewing" // a view only: nothing moves
	OnServer    Phase = "on the server"
	TakingLease Phase = "taking the lease"
	MovingDisks Phase = "moving disks"
	Copying     Phase = "copying"   // pre-copy to the workstation
	Switching   Phase = "switching" // post-copy, either way
	Here        Phase = "running here"
	HandingBack Phase = "handing back" // pre-copy to the server
	Failed      Phase = "failed"
	Aborted     Phase = "aborted"
)

// Event is one thing the UI hears.
type Event interface{ event() }

type (
	// PhaseChanged: the checkout entered Phase. Host is where the VM runs
	// (or runs from, while it moves); From and To name a move under way.
	PhaseChanged struct {
		Phase    Phase
		Host     string
		From, To string
		Err      error // why, for Failed and Aborted
	}
	// Progress is the migration's latest report, in the switchover
	// policy's own types: they are pure, and the dashboard draws them.
	Progress struct {
		Sample   switchover.Sample
		Decision switchover.Decision
	}
	// DiskProgress is a disk move's latest report.
	DiskProgress struct {
		Step        string // "freezing", "indexing", "sending", "receiving", "preparing", "committing"
		Disk        string // the guest's name for it ("vda"), or the file
		Done, Total int64  // bytes of the step's transfer, if it has one
	}
	// Planned: a migration started on this plan, in words: how it means
	// to switch, and how memory travels (through handoff's relay,
	// compressed, or why not).
	Planned struct{ Reason string }
	// Switched: the VM now runs on the destination.
	Switched struct {
		Downtime      time.Duration
		DowntimeKnown bool   // false: neither host reported the pause
		Mode          string // "precopy" or "postcopy"
	}
	// LeaseChanged is the lease as held now; zero: none.
	LeaseChanged struct {
		Holder  string
		Epoch   uint64
		Expires time.Time
	}
	// Checkpoint is where the checkpoints stand that commit the VM back
	// to the server while it runs here.
	Checkpoint struct {
		Underway bool      // one is being taken and sent
		Last     time.Time // the instant the newest one saved; zero: none yet
		ID       string    // its commit on the server
		// Branch is set when the lease was no longer held: the checkpoint
		// was kept as this new image, never committed over another's work.
		Branch string
		Bytes  int64 // what it put on the link
		// Of Bytes, the memory's, and of those its recipe's.
		MemoryBytes, RecipeBytes int64
		Pause                    time.Duration // how long taking it held the guest's memory snapshot
		Next                     time.Time     // when the next one is due; zero: none planned
		// Queued is the instant of a checkpoint taken but not yet on the
		// server (it could not be reached); zero: none waits.
		Queued time.Time
		// MemoryWhole says why the memory went as the file QEMU wrote,
		// not as its pages lined up with the chunks; empty when they were.
		MemoryWhole string
		// Flushed is how long the guest took to write its dirty pages out
		// before the snapshot; NoFlush why it did not (no agent, say).
		Flushed time.Duration
		NoFlush string
	}
	// Screen says where the VM's screen now is: the UI replaces its view
	// with one reached by Dial.
	Screen struct {
		Host string // as the user calls it: "server", "workstation"
		URI  string // the host's libvirt URI, for messages
		Dial Dial
	}
	// Notice is an error to show; the phase stays as it was.
	Notice struct{ Err error }
)

// Dial reaches a VM's screen (an RFB stream).
type Dial func(ctx context.Context) (net.Conn, error)

func (PhaseChanged) event() {}
func (Progress) event()     {}
func (Planned) event()      {}
func (DiskProgress) event() {}
func (Switched) event()     {}
func (LeaseChanged) event() {}
func (Checkpoint) event()   {}
func (Screen) event()       {}
func (Notice) event()       {}
