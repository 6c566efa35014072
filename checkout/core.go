package checkout

import (
	"errors"
	"fmt"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/switchover"
)

// Side names one of the two hosts.
type Side int

const (
	Nowhere Side = iota
	Server
	Workstation
)

func (s Side) String() string {
	switch s {
	case Server:
		return "server"
	case Workstation:
		return "workstation"
	}
	return "nowhere"
}

// Move is one trip of the VM between the hosts.
type Move struct {
	Domain   string
	From, To Side
}

// there reports whether m brings the VM to the workstation.
func (m Move) there() bool { return m.To == Workstation }

// Lease is the image's lease as the server granted it.
type Lease struct {
	ID      string
	Holder  string
	Epoch   uint64
	Expires time.Time
}

// stage is the step of the checkout under way, if any: while one runs,
// the driver is doing I/O whose answer the core waits for.
type stage int

const (
	idle          stage = iota
	locating            // looking for the VM on both hosts
	firstScreen         // finding the server's screen before anything moves
	leasing             // acquiring the lease
	preparing           // DiskMover.Prepare
	starting            // the migration job is being set up
	precopy             // the job copies memory; it can still be aborted
	postcopy            // the VM runs on the destination; the job can only finish
	finishing           // Prepared.Finish after the switch
	undoing             // Prepared.Undo after an abort or a failure
	releasing           // the lease goes back to the server
	checkpointing       // a checkpoint is taken and sent; the VM runs here meanwhile
)

// State is everything the core knows; a value, copied by Step.
type State struct {
	Domain   string
	ViewOnly bool // show the screen, move nothing
	Leased   bool // take a lease before the VM moves here (else: a read-only checkout)
	Disks    bool // the domain has disks to move: their steps show as a phase
	// ServerName and WorkstationName are what the user calls the hosts.
	ServerName, WorkstationName string

	Phase     event.Phase
	Where     Side // where the VM runs
	Move      Move // the move under way; zero when none
	Lease     Lease
	Renewing  bool // a lease is held and being renewed
	LeaseLost bool

	// CheckpointEvery is how often a checkpoint of the VM running here is
	// committed to the server; zero: never.
	CheckpointEvery time.Duration
	Checkpoint      event.Checkpoint // the newest, and the next one due

	stage     stage
	begun     bool
	unwind    error // set: the move under way stops at its next step, for this reason
	abortSent bool  // AbortMigration was sent for this move
	handBack  bool  // asked for while a checkpoint was under way: it starts after
	quit      bool
	stopped   bool
}

// NewState is a checkout's state before it begins.
func NewState(domain string, leased, disks bool) State {
	return State{Domain: domain, Leased: leased, Disks: disks, ServerName: "server", WorkstationName: "workstation", Phase: event.Connecting}
}

// NewViewState is the state of a view of one host's screen.
func NewViewState(domain, host string) State {
	return State{Domain: domain, ViewOnly: true, ServerName: host, WorkstationName: "workstation", Phase: event.Connecting}
}

// Stopped reports whether the checkout has ended: every action it asked
// for has been asked, and it wants no more input.
func (s State) Stopped() bool { return s.stopped }

func (s State) name(side Side) string {
	switch side {
	case Workstation:
		return s.WorkstationName
	case Server:
		return s.ServerName
	}
	return ""
}

// Inputs are what the core steps on: the user's commands and the answers
// to the actions it asked the driver for.
type Input interface{ input() }

type (
	Begin   struct{}
	Located struct {
		Where Side
		Err   error
	}
	ScreenShown struct {
		On  Side
		Err error
	}
	LeaseTaken    struct{ Lease Lease }
	LeaseRefused  struct{ Err error }
	LeaseRenewed  struct{ Lease Lease }
	LeaseLost     struct{ Err error }
	LeaseReleased struct{ Err error }
	// Tick says the time passed an ArmTimer's instant.
	Tick             struct{}
	DisksPrepared    struct{ Err error }
	DisksProgressed  struct{ Progress event.DiskProgress }
	MigrationStarted struct {
		Err  error
		Plan string // how it means to go, when it started
	}
	MigrationProgressed struct{ Progress event.Progress }
	MigrationEnded      struct {
		Result Result
		Err    error // wraps ErrAborted when the job was stopped before the switch
	}
	DisksFinished struct{ Err error }
	DisksUndone   struct{ Err error }
	// CheckpointTaken answers TakeCheckpoint.
	CheckpointTaken struct {
		Checkpoint event.Checkpoint
		Err        error
	}

	SwitchNow struct{}
	HandBack  struct{}
	Abort     struct{}
	Quit      struct{}
)

func (Begin) input()               {}
func (Located) input()             {}
func (ScreenShown) input()         {}
func (LeaseTaken) input()          {}
func (LeaseRefused) input()        {}
func (LeaseRenewed) input()        {}
func (LeaseLost) input()           {}
func (LeaseReleased) input()       {}
func (Tick) input()                {}
func (DisksPrepared) input()       {}
func (DisksProgressed) input()     {}
func (MigrationStarted) input()    {}
func (MigrationProgressed) input() {}
func (MigrationEnded) input()      {}
func (DisksFinished) input()       {}
func (DisksUndone) input()         {}
func (CheckpointTaken) input()     {}
func (SwitchNow) input()           {}
func (HandBack) input()            {}
func (Abort) input()               {}
func (Quit) input()                {}

// Result is how a finished migration went.
type Result struct {
	Mode          string // "precopy" or "postcopy"
	Downtime      time.Duration
	DowntimeKnown bool // a side reported Downtime
}

// ErrAborted is wrapped by a migration's error when it was stopped before
// the switch; the VM keeps running where it was.
var ErrAborted = errors.New("migration aborted")

// Actions are what the driver must do after a step, in order. Each one
// that waits is answered by an Input.
type Action interface{ action() }

type (
	Locate         struct{}                    // answered by Located
	ShowScreen     struct{ On Side }           // answered by ScreenShown
	AcquireLease   struct{}                    // answered by LeaseTaken or LeaseRefused
	RenewLease     struct{ Lease Lease }       // in the background: LeaseRenewed..., LeaseLost
	StopRenewing   struct{}                    // the lease is left to expire
	DropLease      struct{}                    // lost: stop renewing, cancel the work done under it
	ReleaseLease   struct{ Lease Lease }       // stops renewing first; answered by LeaseReleased
	ArmTimer       struct{ At time.Time }      // answered by Tick at that time (replaces the last)
	PrepareDisks   struct{ Move Move }         // answered by DisksPrepared
	StartMigration struct{ Move Move }         // answered by MigrationStarted, MigrationProgressed..., MigrationEnded
	PostCopy       struct{}                    // answers the command that asked
	AbortMigration struct{}                    // answered by MigrationEnded
	FinishDisks    struct{ Move Move }         // answered by DisksFinished
	UndoDisks      struct{ Move Move }         // answered by DisksUndone
	TakeCheckpoint struct{ Lease Lease }       // answered by CheckpointTaken; zero Lease: none is held
	Emit           struct{ Event event.Event } // to the UI
	Stop           struct{}                    // Run returns once its goroutines have
)

func (Locate) action()         {}
func (ShowScreen) action()     {}
func (AcquireLease) action()   {}
func (RenewLease) action()     {}
func (StopRenewing) action()   {}
func (DropLease) action()      {}
func (ReleaseLease) action()   {}
func (ArmTimer) action()       {}
func (PrepareDisks) action()   {}
func (StartMigration) action() {}
func (PostCopy) action()       {}
func (AbortMigration) action() {}
func (FinishDisks) action()    {}
func (UndoDisks) action()      {}
func (TakeCheckpoint) action() {}
func (Emit) action()           {}
func (Stop) action()           {}

// Refusals of the user's commands.
var (
	ErrViewOnly    = errors.New("this is a view only: use handoff grab to move the VM")
	ErrNotHere     = errors.New("the VM is not running here: nothing to hand back")
	ErrNoMigration = errors.New("no migration under way to switch")
	ErrQuitting    = errors.New("handoff is quitting")
)

// ErrUnexpected is returned for an input that does not fit the state; the
// state is left as it was.
var ErrUnexpected = errors.New("unexpected input")

// Step is the checkout's one transition: from s, on in, at now, the next
// state and the actions the driver must perform. An error refuses a
// command (or an input that does not fit) and leaves s unchanged.
func Step(s State, in Input, now time.Time) (State, []Action, error) {
	if s.stopped {
		return s, nil, nil // late answers of a checkout that ended
	}
	t := &step{s: s, now: now}
	if err := t.on(in); err != nil {
		return s, nil, err
	}
	t.settle()
	return t.s, t.acts, nil
}

type step struct {
	s    State
	now  time.Time
	acts []Action
}

func (t *step) do(a ...Action)     { t.acts = append(t.acts, a...) }
func (t *step) emit(e event.Event) { t.do(Emit{e}) }

// enter shows a new phase; from and to are the move under way, if any.
func (t *step) enter(p event.Phase, host Side, err error) {
	t.s.Phase = p
	e := event.PhaseChanged{Phase: p, Host: t.s.name(host), Err: err}
	if m := t.s.Move; m.From != Nowhere {
		e.From, e.To = t.s.name(m.From), t.s.name(m.To)
	}
	if t.s.ViewOnly {
		e.Host = t.s.ServerName
	}
	t.emit(e)
}

func (t *step) expect(st ...stage) error {
	for _, x := range st {
		if t.s.stage == x {
			return nil
		}
	}
	return ErrUnexpected
}

func (t *step) on(in Input) error {
	s := &t.s
	switch in := in.(type) {
	case Begin:
		if s.begun {
			return ErrUnexpected
		}
		s.begun = true
		if s.ViewOnly {
			s.stage = firstScreen
			t.do(ShowScreen{On: Server})
			return nil
		}
		s.stage = locating
		t.do(Locate{})

	case Located:
		if err := t.expect(locating); err != nil {
			return err
		}
		s.stage = idle
		switch {
		case in.Err != nil:
			t.enter(event.Failed, Nowhere, in.Err)
		case s.quit:
		case in.Where == Workstation:
			s.Where = Workstation
			if s.Leased {
				s.stage = leasing
				t.enter(event.TakingLease, Workstation, nil)
				t.do(AcquireLease{})
				return nil
			}
			t.arrivedHere()
		default:
			s.Where = Server
			s.stage = firstScreen
			t.do(ShowScreen{On: Server})
		}

	case ScreenShown:
		if s.stage != firstScreen {
			if in.Err != nil {
				t.emit(event.Notice{Err: in.Err})
			}
			return nil
		}
		s.stage = idle
		switch {
		case in.Err != nil:
			t.enter(event.Failed, Server, in.Err)
		case s.ViewOnly:
			t.enter(event.Viewing, Server, nil)
		case s.quit:
		default:
			t.startMove(Move{Domain: s.Domain, From: Server, To: Workstation})
		}

	case LeaseTaken:
		if err := t.expect(leasing); err != nil {
			return err
		}
		s.Lease, s.Renewing = in.Lease, true
		t.emit(leaseEvent(in.Lease))
		t.do(RenewLease{Lease: in.Lease})
		t.armTimer()
		switch {
		case s.Move.From == Nowhere: // the VM ran here already
			s.stage = idle
			t.arrivedHere()
		case s.unwind != nil:
			t.enter(event.Aborted, Server, s.unwind)
			t.release()
		default:
			t.prepare()
		}

	case LeaseRefused:
		if err := t.expect(leasing); err != nil {
			return err
		}
		s.stage = idle
		if s.Move.From == Nowhere { // here already: go on without it
			t.emit(event.Notice{Err: in.Err})
			t.arrivedHere()
			return nil
		}
		t.enter(event.Failed, Server, in.Err)
		s.Move = Move{}

	case LeaseRenewed:
		if !s.Renewing {
			return nil // renewed just before it was stopped
		}
		s.Lease = in.Lease
		t.emit(leaseEvent(in.Lease))
		t.armTimer()

	case LeaseLost:
		if !s.Renewing {
			return nil
		}
		t.lost(in.Err)

	case Tick:
		if s.Renewing && !t.now.Before(s.Lease.Expires) {
			t.lost(fmt.Errorf("the lease on %s expired at %s: renewals stopped reaching the server; later checkpoints will be saved as a branch",
				s.Domain, s.Lease.Expires.Format("15:04:05")))
		}
		if next := s.Checkpoint.Next; !next.IsZero() && !t.now.Before(next) && s.stage == idle && !s.quit && s.Where == Workstation {
			s.stage = checkpointing
			s.Checkpoint.Underway, s.Checkpoint.Next = true, time.Time{}
			t.emit(s.Checkpoint)
			t.do(TakeCheckpoint{Lease: s.Lease})
		}
		t.armTimer()

	case CheckpointTaken:
		if err := t.expect(checkpointing); err != nil {
			return err
		}
		s.stage = idle
		retry := s.CheckpointEvery
		switch {
		case errors.Is(in.Err, ErrQueued):
			t.emit(event.Notice{Err: fmt.Errorf("checkpoint of %s: %w; the VM runs on here", s.Domain, in.Err)})
			s.Checkpoint.Underway, s.Checkpoint.Queued = false, in.Checkpoint.Queued
			retry = min(retry, queuedRetry) // land it soon after the link returns
		case in.Err != nil:
			t.emit(event.Notice{Err: fmt.Errorf("checkpoint of %s: %w; the VM runs on here, and the next checkpoint tries again", s.Domain, in.Err)})
			s.Checkpoint.Underway = false
		default:
			s.Checkpoint = in.Checkpoint
		}
		if s.handBack {
			s.handBack = false
			t.emit(s.Checkpoint)
			t.startMove(Move{Domain: s.Domain, From: Workstation, To: Server})
			return nil
		}
		t.scheduleCheckpointIn(retry)

	case DisksPrepared:
		if err := t.expect(preparing); err != nil {
			return err
		}
		m := s.Move
		switch {
		case in.Err != nil: // Prepare left nothing behind
			t.enter(event.Failed, m.From, fmt.Errorf("move the disks of %s to the %s: %w", s.Domain, s.name(m.To), in.Err))
			t.unwound()
		case s.unwind != nil:
			t.enter(event.Aborted, m.From, s.unwind)
			s.stage = undoing
			t.do(UndoDisks{Move: m})
		default:
			s.stage = starting
			p := event.Copying
			if !m.there() {
				p = event.HandingBack
			}
			t.enter(p, m.From, nil)
			t.do(StartMigration{Move: m})
		}

	case MigrationStarted:
		if err := t.expect(starting); err != nil {
			return err
		}
		switch {
		case in.Err != nil:
			t.enter(event.Failed, s.Move.From, in.Err)
			s.stage = undoing
			t.do(UndoDisks{Move: s.Move})
		default:
			s.stage = precopy
			if in.Plan != "" {
				t.emit(event.Planned{Reason: in.Plan})
			}
			if s.unwind != nil {
				s.abortSent = true
				t.do(AbortMigration{})
			}
		}

	case MigrationProgressed:
		if s.stage != precopy && s.stage != postcopy {
			return nil // a report that crossed the job's end
		}
		t.emit(in.Progress)
		if in.Progress.Sample.Phase == switchover.PhasePostcopy && s.stage == precopy {
			s.stage = postcopy
			t.enter(event.Switching, s.Move.To, nil)
		}

	case MigrationEnded:
		if err := t.expect(starting, precopy, postcopy); err != nil {
			return err
		}
		m := s.Move
		if in.Err != nil {
			p := event.Failed
			if errors.Is(in.Err, ErrAborted) {
				p = event.Aborted
				if s.unwind != nil && !errors.Is(s.unwind, ErrAborted) {
					in.Err = fmt.Errorf("%w (%w)", in.Err, s.unwind) // say why: the lease was lost
				}
			}
			t.enter(p, m.From, in.Err)
			s.stage = undoing
			t.do(UndoDisks{Move: m})
			return nil
		}
		s.Where = m.To
		t.emit(event.Switched{Downtime: in.Result.Downtime, DowntimeKnown: in.Result.DowntimeKnown, Mode: in.Result.Mode})
		t.do(ShowScreen{On: m.To})
		s.stage = finishing
		if s.Disks {
			t.enter(event.MovingDisks, m.To, nil)
		}
		t.do(FinishDisks{Move: m})

	case DisksFinished:
		if err := t.expect(finishing); err != nil {
			return err
		}
		if in.Err != nil {
			t.emit(event.Notice{Err: fmt.Errorf("settle the disks of %s on the %s: %w", s.Domain, s.name(s.Move.To), in.Err)})
		}
		if s.Move.there() {
			s.Move, s.stage = Move{}, idle
			t.enter(event.Here, Workstation, nil)
			t.scheduleCheckpoint()
			return nil
		}
		t.unwound() // back on the server: the lease goes back

	case DisksUndone:
		if err := t.expect(undoing); err != nil {
			return err
		}
		if in.Err != nil {
			t.emit(event.Notice{Err: fmt.Errorf("undo the move of the disks of %s: %w", s.Domain, in.Err)})
		}
		t.unwound()

	case LeaseReleased:
		if err := t.expect(releasing); err != nil {
			return err
		}
		if in.Err != nil {
			t.emit(event.Notice{Err: fmt.Errorf("release the lease: %w", in.Err)})
		}
		s.Lease = Lease{}
		t.emit(event.LeaseChanged{})
		s.stage = idle
		back := s.Where == Server && s.Move.From == Workstation
		s.Move = Move{}
		if back {
			t.enter(event.OnServer, Server, nil)
		}

	case DisksProgressed:
		if s.stage == preparing || s.stage == finishing || s.stage == undoing {
			t.emit(in.Progress)
		}

	case SwitchNow:
		switch {
		case s.ViewOnly:
			return ErrViewOnly
		case s.stage == precopy:
			t.do(PostCopy{})
		case s.stage == postcopy:
		case s.stage == preparing || s.stage == starting:
			return errors.New("the migration has not started yet: switch once it copies memory")
		default:
			return ErrNoMigration
		}

	case HandBack:
		switch {
		case s.ViewOnly:
			return ErrViewOnly
		case s.quit:
			return ErrQuitting
		case s.Where == Workstation && s.stage == finishing:
			return errors.New("the VM's disks are still settling here: hand it back in a moment")
		case s.Where == Workstation && s.stage == checkpointing:
			s.handBack = true
			t.emit(event.Notice{Err: errors.New("a checkpoint is being sent: the hand back starts once it is committed")})
			return nil
		case s.Where != Workstation || s.stage != idle:
			return ErrNotHere
		}
		t.startMove(Move{Domain: s.Domain, From: Workstation, To: Server})

	case Abort:
		return t.abort(ErrAborted)

	case Quit:
		s.quit = true
		if err := t.abort(ErrQuitting); err != nil {
			return nil // post-copy: quit once the VM has landed
		}
	default:
		return fmt.Errorf("%w: %T", ErrUnexpected, in)
	}
	return nil
}

// abort stops the move under way at its next step; why says what asked.
func (t *step) abort(why error) error {
	s := &t.s
	switch s.stage {
	case postcopy:
		return fmt.Errorf("the VM already runs on the %s (post-copy): the migration can only finish now", s.name(s.Move.To))
	case leasing, preparing, starting:
		if s.Move.From != Nowhere && s.unwind == nil {
			s.unwind = why
		}
	case precopy:
		if s.unwind == nil {
			s.unwind = why
		}
		if !s.abortSent {
			s.abortSent = true
			t.do(AbortMigration{})
		}
	}
	return nil
}

// startMove takes the first step of a move: the lease when going there.
func (t *step) startMove(m Move) {
	s := &t.s
	s.Move, s.unwind, s.abortSent = m, nil, false
	if !s.Checkpoint.Next.IsZero() {
		s.Checkpoint.Next = time.Time{}
		t.emit(s.Checkpoint)
	}
	if m.there() && s.Leased {
		s.stage = leasing
		t.enter(event.TakingLease, m.From, nil)
		t.do(AcquireLease{})
		return
	}
	t.prepare()
}

func (t *step) prepare() {
	t.s.stage = preparing
	if t.s.Disks {
		t.enter(event.MovingDisks, t.s.Move.From, nil)
	}
	t.do(PrepareDisks{Move: t.s.Move})
}

// unwound ends a move whose disks are settled: a lease taken for it goes
// back when the VM is (still or again) on the server.
func (t *step) unwound() {
	s := &t.s
	if s.Where == Server && s.Renewing {
		t.release()
		return
	}
	back := s.Where == Server && s.Move.From == Workstation
	s.Move, s.stage = Move{}, idle
	if back {
		t.enter(event.OnServer, Server, nil)
	}
}

func (t *step) release() {
	s := &t.s
	s.stage = releasing
	s.Renewing = false
	t.do(ReleaseLease{Lease: s.Lease})
}

// lost is the lease gone while held: the VM keeps running where it is,
// read-only, and a move here under way stops.
func (t *step) lost(err error) {
	s := &t.s
	s.Renewing, s.LeaseLost, s.Lease = false, true, Lease{}
	t.do(DropLease{})
	t.emit(event.Notice{Err: err})
	t.emit(event.LeaseChanged{})
	if s.Move.there() {
		t.abort(err)
	}
}

func (t *step) arrivedHere() {
	t.enter(event.Here, Workstation, nil)
	t.do(ShowScreen{On: Workstation})
	t.scheduleCheckpoint()
}

// scheduleCheckpoint plans the next checkpoint of the VM running here.
// Once the lease is lost, checkpoints go on: the server keeps them as a
// branch, never as a commit over another device's work.
func (t *step) scheduleCheckpoint() { t.scheduleCheckpointIn(t.s.CheckpointEvery) }

// queuedRetry bounds the wait before a queued checkpoint is sent again.
const queuedRetry = 30 * time.Second

func (t *step) scheduleCheckpointIn(wait time.Duration) {
	s := &t.s
	if s.CheckpointEvery <= 0 || !s.Leased || s.Where != Workstation || s.quit {
		return
	}
	s.Checkpoint.Next = t.now.Add(wait)
	t.emit(s.Checkpoint)
	t.armTimer()
}

// armTimer asks for a Tick at the first instant the core waits for: the
// lease's expiry, or the next checkpoint.
func (t *step) armTimer() {
	s := &t.s
	var at time.Time
	if s.Renewing {
		at = s.Lease.Expires
	}
	if next := s.Checkpoint.Next; !next.IsZero() && (at.IsZero() || next.Before(at)) {
		at = next
	}
	if !at.IsZero() {
		t.do(ArmTimer{At: at})
	}
}

// settle ends the checkout once it is quitting and nothing is under way.
func (t *step) settle() {
	s := &t.s
	if !s.quit || s.stage != idle || s.stopped {
		return
	}
	if s.Renewing {
		// The VM keeps running here: the lease is left to expire rather
		// than handed to another device while it still runs.
		s.Renewing = false
		t.do(StopRenewing{})
	}
	s.stopped = true
	t.do(Stop{})
}

func leaseEvent(l Lease) event.LeaseChanged {
	return event.LeaseChanged{Holder: l.Holder, Epoch: l.Epoch, Expires: l.Expires}
}
