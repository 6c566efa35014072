package switchover

import "time"

// Phase is where a migration job stands, as the user sees it.
type Phase string

const (
	PhaseSetup     Phase = "setup"     // job started, no memory sent yet
	PhaseDisks     Phase = "disks"     // disks are mirrored to the destination before memory
	PhasePrecopy   Phase = "precopy"   // memory streams while the VM runs on the source
	PhasePostcopy  Phase = "postcopy"  // VM runs on the destination, pages fetched on demand
	PhaseCompleted Phase = "completed" // VM runs on the destination alone
	PhaseAborted   Phase = "aborted"   // stopped on request; VM still runs on the source
	PhaseFailed    Phase = "failed"    // stopped by an error; VM still runs on the source
)

// Sample is one reading of a running migration job. Rates are bytes per
// second: libvirt reports the dirty rate in pages per second, and the
// libvirt package converts before a Sample is made.
type Sample struct {
	Elapsed     time.Duration // since the job started
	Phase       Phase
	Iteration   uint64  // pre-copy pass over memory, starting at 1
	DirtyRate   float64 // bytes/s the guest dirties
	Bandwidth   float64 // bytes/s the link carries, as measured by QEMU
	Remaining   uint64  // bytes still to send
	Transferred uint64  // bytes sent so far
	Total       uint64  // guest memory size in bytes
	// Disks being mirrored with the memory: what is left of them, and
	// their size. At the switch the remainder is flushed while the VM
	// pauses, so it counts towards the downtime.
	DiskRemaining uint64
	DiskTotal     uint64
	DiskRate      float64 // bytes/s the disk mirror moves
}

// Action is what the policy wants done now.
type Action string

const (
	Continue Action = "continue" // keep copying
	Switch   Action = "switch"   // stop the source and copy the rest (pre-copy finish)
	PostCopy Action = "postcopy" // start the VM on the destination, page the rest on demand
)

// Decision is the policy's answer for one moment of a migration.
type Decision struct {
	Action Action
	// SwitchIn is the predicted time until the switch, valid when
	// Converging is true; zero when the switch is due now.
	SwitchIn time.Duration
	// Converging is false when the guest dirties memory faster than the link
	// carries it: pre-copy alone will not finish.
	Converging bool
	// Reason says in words why, for people: "dirty rate 4.1 MB/s exceeds
	// bandwidth 2.4 MB/s".
	Reason string
	// PredictedDowntime is how long the VM would pause if it switched now.
	PredictedDowntime time.Duration
}
