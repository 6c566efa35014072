package checkout

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/switchover"
)

var t0 = time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC)

var held = Lease{ID: "L1", Holder: "laptop", Epoch: 1, Expires: t0.Add(2 * time.Minute)}

func progress(p switchover.Phase) MigrationProgressed {
	return MigrationProgressed{Progress: event.Progress{Sample: switchover.Sample{Phase: p}}}
}

var (
	errBoom    = errors.New("boom")
	errAborted = fmt.Errorf("%w: desktop keeps running on qemu:///srv", ErrAborted)
	precopied  = MigrationEnded{Result: Result{Mode: "precopy", Downtime: 40 * time.Millisecond, DowntimeKnown: true}}
	postcopied = MigrationEnded{Result: Result{Mode: "postcopy", Downtime: 5 * time.Millisecond, DowntimeKnown: true}}
)

// describe writes actions as the tables read them, one "; " apart.
func describe(acts []Action) string {
	var out []string
	for _, a := range acts {
		out = append(out, describeOne(a))
	}
	return strings.Join(out, "; ")
}

func describeOne(a Action) string {
	mv := func(m Move) string { return m.From.String() + "→" + m.To.String() }
	switch a := a.(type) {
	case Emit:
		switch e := a.Event.(type) {
		case event.PhaseChanged:
			s := "phase " + string(e.Phase) + " @" + e.Host
			if e.From != "" {
				s += " " + e.From + "→" + e.To
			}
			if e.Err != nil {
				s += ": " + e.Err.Error()
			}
			return s
		case event.Progress:
			return "progress " + string(e.Sample.Phase)
		case event.DiskProgress:
			return "disk " + e.Step
		case event.Switched:
			return "switched " + e.Mode
		case event.Planned:
			return "plan: " + e.Reason
		case event.LeaseChanged:
			if e.Holder == "" {
				return "lease none"
			}
			return fmt.Sprintf("lease %s %d", e.Holder, e.Epoch)
		case event.Notice:
			return "notice: " + e.Err.Error()
		case event.Checkpoint:
			switch {
			case e.Underway:
				return "checkpoint under way"
			case !e.Next.IsZero():
				return "checkpoint next " + e.Next.Format("15:04:05")
			case e.ID == "":
				return "checkpoint none due"
			}
			return "checkpoint " + e.ID
		}
		return fmt.Sprintf("emit %T", a.Event)
	case ShowScreen:
		return "ShowScreen " + a.On.String()
	case PrepareDisks:
		return "PrepareDisks " + mv(a.Move)
	case StartMigration:
		return "StartMigration " + mv(a.Move)
	case FinishDisks:
		return "FinishDisks " + mv(a.Move)
	case UndoDisks:
		return "UndoDisks " + mv(a.Move)
	case ArmTimer:
		return "ArmTimer " + a.At.Format("15:04:05")
	case RenewLease:
		return "RenewLease " + a.Lease.ID
	case ReleaseLease:
		return "ReleaseLease " + a.Lease.ID
	case TakeCheckpoint:
		return "TakeCheckpoint " + a.Lease.ID
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", a), "checkout.")
}

type row struct {
	in   Input
	want string // the actions, described
	err  string // a refusal, by part of its message
	at   time.Duration
}

func run(t *testing.T, s State, rows []row) State {
	t.Helper()
	for i, r := range rows {
		next, acts, err := Step(s, r.in, t0.Add(r.at))
		switch {
		case r.err != "" && (err == nil || !strings.Contains(err.Error(), r.err)):
			t.Fatalf("step %d (%T): error %v, want one saying %q", i, r.in, err, r.err)
		case r.err == "" && err != nil:
			t.Fatalf("step %d (%T): refused: %v", i, r.in, err)
		case err != nil && (len(acts) > 0 || next != s):
			t.Fatalf("step %d (%T): a refusal changed the state or acted: %s", i, r.in, describe(acts))
		}
		if got := describe(acts); got != r.want {
			t.Fatalf("step %d (%T):\n got %s\nwant %s", i, r.in, got, r.want)
		}
		s = next
	}
	return s
}

// Scripts that bring a fresh checkout to a state the tables start from.
var (
	toServer = []row{
		{in: Begin{}, want: "Locate"},
		{in: Located{Where: Server}, want: "ShowScreen server"},
	}
	toPrecopy = append(append([]row{}, toServer...),
		row{in: ScreenShown{On: Server}, want: "phase taking the lease @server server→workstation; AcquireLease"},
		row{in: LeaseTaken{Lease: held}, want: "lease laptop 1; RenewLease L1; ArmTimer 22:02:00; phase moving disks @server server→workstation; PrepareDisks server→workstation"},
		row{in: DisksPrepared{}, want: "phase copying @server server→workstation; StartMigration server→workstation"},
		row{in: MigrationStarted{}, want: ""},
		row{in: progress(switchover.PhasePrecopy), want: "progress precopy"},
	)
	toHere = append(append([]row{}, toPrecopy...),
		row{in: precopied, want: "switched precopy; ShowScreen workstation; phase moving disks @workstation server→workstation; FinishDisks server→workstation"},
		row{in: DisksFinished{}, want: "phase running here @workstation"},
	)
	toHandBackPrecopy = append(append([]row{}, toHere...),
		row{in: HandBack{}, want: "phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
		row{in: DisksPrepared{}, want: "phase handing back @workstation workstation→server; StartMigration workstation→server"},
		row{in: MigrationStarted{}, want: ""},
	)
)

func then(script []row, rows ...row) []row { return append(append([]row{}, script...), rows...) }

func TestCoreTransitions(t *testing.T) {
	lost := errors.New("lost the lease on desktop: the lease was stolen or released")
	for _, tc := range []struct {
		name string
		s    State
		rows []row
	}{
		{"there and back with a lease", NewState("desktop", true, true), then(toHandBackPrecopy,
			row{in: progress(switchover.PhasePostcopy), want: "progress postcopy; phase switching @server workstation→server"},
			row{in: progress(switchover.PhasePostcopy), want: "progress postcopy"},
			row{in: postcopied, want: "switched postcopy; ShowScreen server; phase moving disks @server workstation→server; FinishDisks workstation→server"},
			row{in: DisksFinished{}, want: "ReleaseLease L1"},
			row{in: LeaseReleased{}, want: "lease none; phase on the server @server"},
			row{in: Quit{}, want: "Stop"},
		)},
		{"a read-only checkout takes no lease", NewState("desktop", false, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: DisksPrepared{}, want: "phase copying @server server→workstation; StartMigration server→workstation"},
			row{in: MigrationStarted{}, want: ""},
			row{in: precopied, want: "switched precopy; ShowScreen workstation; phase moving disks @workstation server→workstation; FinishDisks server→workstation"},
			row{in: DisksFinished{}, want: "phase running here @workstation"},
			row{in: HandBack{}, want: "phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
			row{in: DisksPrepared{}, want: "phase handing back @workstation workstation→server; StartMigration workstation→server"},
			row{in: MigrationStarted{}, want: ""},
			row{in: precopied, want: "switched precopy; ShowScreen server; phase moving disks @server workstation→server; FinishDisks workstation→server"},
			row{in: DisksFinished{}, want: "phase on the server @server"},
		)},
		{"no disks: no disk phase, the same steps", NewState("desktop", false, false), then(toServer,
			row{in: ScreenShown{On: Server}, want: "PrepareDisks server→workstation"},
			row{in: DisksPrepared{}, want: "phase copying @server server→workstation; StartMigration server→workstation"},
			row{in: MigrationStarted{Plan: "pre-copy; memory goes uncompressed: no relay"}, want: "plan: pre-copy; memory goes uncompressed: no relay"},
			row{in: precopied, want: "switched precopy; ShowScreen workstation; FinishDisks server→workstation"},
			row{in: DisksFinished{}, want: "phase running here @workstation"},
			row{in: HandBack{}, want: "PrepareDisks workstation→server"},
			row{in: DisksPrepared{}, want: "phase handing back @workstation workstation→server; StartMigration workstation→server"},
		)},
		{"the VM runs here already", NewState("desktop", true, true), []row{
			{in: Begin{}, want: "Locate"},
			{in: Located{Where: Workstation}, want: "phase taking the lease @workstation; AcquireLease"},
			{in: LeaseTaken{Lease: held}, want: "lease laptop 1; RenewLease L1; ArmTimer 22:02:00; phase running here @workstation; ShowScreen workstation"},
			{in: HandBack{}, want: "phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
		}},
		{"here already, the lease refused: on without it", NewState("desktop", true, true), []row{
			{in: Begin{}, want: "Locate"},
			{in: Located{Where: Workstation}, want: "phase taking the lease @workstation; AcquireLease"},
			{in: LeaseRefused{Err: errBoom}, want: "notice: boom; phase running here @workstation; ShowScreen workstation"},
			{in: HandBack{}, want: "phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
		}},
		{"the VM is nowhere", NewState("desktop", true, true), []row{
			{in: Begin{}, want: "Locate"},
			{in: Located{Err: errBoom}, want: "phase failed @: boom"},
			{in: HandBack{}, err: "not running here"},
			{in: Quit{}, want: "Stop"},
		}},
		{"no screen on the server: nothing moves", NewState("desktop", true, true), then(toServer,
			row{in: ScreenShown{On: Server, Err: errBoom}, want: "phase failed @server: boom"},
			row{in: SwitchNow{}, err: "no migration"},
		)},
		{"the lease is refused: nothing moves", NewState("desktop", true, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase taking the lease @server server→workstation; AcquireLease"},
			row{in: LeaseRefused{Err: errBoom}, want: "phase failed @server server→workstation: boom"},
			row{in: HandBack{}, err: "not running here"},
		)},
		{"the disks fail to move: the lease goes back", NewState("desktop", true, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase taking the lease @server server→workstation; AcquireLease"},
			row{in: LeaseTaken{Lease: held}, want: "lease laptop 1; RenewLease L1; ArmTimer 22:02:00; phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: DisksProgressed{Progress: event.DiskProgress{Step: "receiving"}}, want: "disk receiving"},
			row{in: DisksPrepared{Err: errBoom}, want: "phase failed @server server→workstation: move the disks of desktop to the workstation: boom; ReleaseLease L1"},
			row{in: LeaseReleased{}, want: "lease none"},
			row{in: HandBack{}, err: "not running here"},
		)},
		{"the migration fails to start: disks undone, lease released", NewState("desktop", true, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase taking the lease @server server→workstation; AcquireLease"},
			row{in: LeaseTaken{Lease: held}, want: "lease laptop 1; RenewLease L1; ArmTimer 22:02:00; phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: DisksPrepared{}, want: "phase copying @server server→workstation; StartMigration server→workstation"},
			row{in: SwitchNow{}, err: "not started yet"},
			row{in: MigrationStarted{Err: errBoom}, want: "phase failed @server server→workstation: boom; UndoDisks server→workstation"},
			row{in: DisksUndone{Err: errBoom}, want: "notice: undo the move of the disks of desktop: boom; ReleaseLease L1"},
			row{in: LeaseReleased{Err: errBoom}, want: "notice: release the lease: boom; lease none"},
		)},
		{"abort mid pre-copy: undo, then the lease goes back", NewState("desktop", true, true), then(toPrecopy,
			row{in: Abort{}, want: "AbortMigration"},
			row{in: Abort{}, want: ""},
			row{in: progress(switchover.PhasePrecopy), want: "progress precopy"},
			row{in: MigrationEnded{Err: errAborted}, want: "phase aborted @server server→workstation: migration aborted: desktop keeps running on qemu:///srv; UndoDisks server→workstation"},
			row{in: progress(switchover.PhasePrecopy), want: ""},
			row{in: HandBack{}, err: "not running here"},
			row{in: DisksUndone{}, want: "ReleaseLease L1"},
			row{in: LeaseReleased{}, want: "lease none"},
			row{in: Abort{}, want: ""},
		)},
		{"abort while the disks move", NewState("desktop", true, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase taking the lease @server server→workstation; AcquireLease"},
			row{in: LeaseTaken{Lease: held}, want: "lease laptop 1; RenewLease L1; ArmTimer 22:02:00; phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: Abort{}, want: ""},
			row{in: DisksPrepared{}, want: "phase aborted @server server→workstation: migration aborted; UndoDisks server→workstation"},
			row{in: DisksUndone{}, want: "ReleaseLease L1"},
		)},
		{"abort while the lease is taken", NewState("desktop", true, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase taking the lease @server server→workstation; AcquireLease"},
			row{in: Abort{}, want: ""},
			row{in: LeaseTaken{Lease: held}, want: "lease laptop 1; RenewLease L1; ArmTimer 22:02:00; phase aborted @server server→workstation: migration aborted; ReleaseLease L1"},
			row{in: LeaseReleased{}, want: "lease none"},
		)},
		{"abort while the job starts", NewState("desktop", false, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: DisksPrepared{}, want: "phase copying @server server→workstation; StartMigration server→workstation"},
			row{in: Abort{}, want: ""},
			row{in: MigrationStarted{}, want: "AbortMigration"},
			row{in: MigrationEnded{Err: errAborted}, want: "phase aborted @server server→workstation: migration aborted: desktop keeps running on qemu:///srv; UndoDisks server→workstation"},
			row{in: DisksUndone{}, want: ""},
		)},
		{"switch now, then abort is refused past the switch", NewState("desktop", true, true), then(toPrecopy,
			row{in: SwitchNow{}, want: "PostCopy"},
			row{in: progress(switchover.PhasePostcopy), want: "progress postcopy; phase switching @workstation server→workstation"},
			row{in: SwitchNow{}, want: ""},
			row{in: Abort{}, err: "post-copy"},
			row{in: HandBack{}, err: "not running here"},
			row{in: postcopied, want: "switched postcopy; ShowScreen workstation; phase moving disks @workstation server→workstation; FinishDisks server→workstation"},
			row{in: HandBack{}, err: "still settling"},
			row{in: SwitchNow{}, err: "no migration"},
			row{in: DisksFinished{Err: errBoom}, want: "notice: settle the disks of desktop on the workstation: boom; phase running here @workstation"},
			row{in: SwitchNow{}, err: "no migration"},
		)},
		{"a failed hand back leaves the VM here, leased", NewState("desktop", true, true), then(toHandBackPrecopy,
			row{in: MigrationEnded{Err: errBoom}, want: "phase failed @workstation workstation→server: boom; UndoDisks workstation→server"},
			row{in: DisksUndone{}, want: ""},
			row{in: HandBack{}, want: "phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
		)},
		{"lease renewed, then expired when renewals stop landing", NewState("desktop", true, true), then(toHere,
			row{in: LeaseRenewed{Lease: Lease{ID: "L1", Holder: "laptop", Epoch: 1, Expires: t0.Add(3 * time.Minute)}}, want: "lease laptop 1; ArmTimer 22:03:00"},
			row{in: Tick{}, at: 2 * time.Minute, want: "ArmTimer 22:03:00"}, // the timer that fired early is set again
			row{in: Tick{}, at: 3 * time.Minute, want: "DropLease; notice: the lease on desktop expired at 22:03:00: renewals stopped reaching the server; later checkpoints will be saved as a branch; lease none"},
			row{in: LeaseRenewed{Lease: held}, want: ""},
			row{in: Tick{}, at: 4 * time.Minute, want: ""},
		)},
		{"a lost lease while running here: read-only, nothing released", NewState("desktop", true, true), then(toHere,
			row{in: LeaseLost{Err: lost}, want: "DropLease; notice: " + lost.Error() + "; lease none"},
			row{in: LeaseLost{Err: lost}, want: ""},
			row{in: HandBack{}, want: "phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
			row{in: DisksPrepared{}, want: "phase handing back @workstation workstation→server; StartMigration workstation→server"},
			row{in: MigrationStarted{}, want: ""},
			row{in: precopied, want: "switched precopy; ShowScreen server; phase moving disks @server workstation→server; FinishDisks workstation→server"},
			row{in: DisksFinished{}, want: "phase on the server @server"},
		)},
		{"a lost lease mid-migration there stops the move", NewState("desktop", true, true), then(toPrecopy,
			row{in: LeaseLost{Err: lost}, want: "DropLease; notice: " + lost.Error() + "; lease none; AbortMigration"},
			row{in: Abort{}, want: ""},
			row{in: MigrationEnded{Err: errAborted}, want: "phase aborted @server server→workstation: migration aborted: desktop keeps running on qemu:///srv (" + lost.Error() + "); UndoDisks server→workstation"},
			row{in: DisksUndone{}, want: ""},
		)},
		{"a lost lease past the switch: the VM lands here, read-only", NewState("desktop", true, true), then(toPrecopy,
			row{in: progress(switchover.PhasePostcopy), want: "progress postcopy; phase switching @workstation server→workstation"},
			row{in: LeaseLost{Err: lost}, want: "DropLease; notice: " + lost.Error() + "; lease none"},
			row{in: postcopied, want: "switched postcopy; ShowScreen workstation; phase moving disks @workstation server→workstation; FinishDisks server→workstation"},
			row{in: DisksFinished{}, want: "phase running here @workstation"},
		)},
		{"quit mid-migration aborts, unwinds, then stops", NewState("desktop", true, true), then(toPrecopy,
			row{in: Quit{}, want: "AbortMigration"},
			row{in: HandBack{}, err: "quitting"},
			row{in: MigrationEnded{Err: errAborted}, want: "phase aborted @server server→workstation: migration aborted: desktop keeps running on qemu:///srv (handoff is quitting); UndoDisks server→workstation"},
			row{in: DisksUndone{}, want: "ReleaseLease L1"},
			row{in: LeaseReleased{}, want: "lease none; Stop"},
			row{in: Quit{}, want: ""},
			row{in: HandBack{}, want: ""},
		)},
		{"quit past the switch waits for the VM to land", NewState("desktop", true, true), then(toPrecopy,
			row{in: progress(switchover.PhasePostcopy), want: "progress postcopy; phase switching @workstation server→workstation"},
			row{in: Quit{}, want: ""},
			row{in: postcopied, want: "switched postcopy; ShowScreen workstation; phase moving disks @workstation server→workstation; FinishDisks server→workstation"},
			row{in: DisksFinished{}, want: "phase running here @workstation; StopRenewing; Stop"},
		)},
		{"quit while the disks move undoes them", NewState("desktop", false, true), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: Quit{}, want: ""},
			row{in: DisksPrepared{}, want: "phase aborted @server server→workstation: handoff is quitting; UndoDisks server→workstation"},
			row{in: DisksUndone{}, want: "Stop"},
		)},
		{"quit while running here leaves the lease to expire", NewState("desktop", true, true), then(toHere,
			row{in: Quit{}, want: "StopRenewing; Stop"},
			row{in: LeaseRenewed{Lease: held}, want: ""},
		)},
		{"quit while looking for the VM", NewState("desktop", true, true), []row{
			{in: Begin{}, want: "Locate"},
			{in: Quit{}, want: ""},
			{in: Located{Where: Server}, want: "Stop"},
		}},
		{"quit while the server's screen is found", NewState("desktop", true, true), then(toServer,
			row{in: Quit{}, want: ""},
			row{in: ScreenShown{On: Server}, want: "Stop"},
		)},
		{"a view moves nothing", NewViewState("desktop", "qemu:///x"), []row{
			{in: Begin{}, want: "ShowScreen server"},
			{in: ScreenShown{On: Server}, want: "phase viewing @qemu:///x"},
			{in: SwitchNow{}, err: "view only"},
			{in: HandBack{}, err: "view only"},
			{in: Abort{}, want: ""},
			{in: Quit{}, want: "Stop"},
		}},
		{"a view without a screen", NewViewState("desktop", "qemu:///x"), []row{
			{in: Begin{}, want: "ShowScreen server"},
			{in: ScreenShown{On: Server, Err: errBoom}, want: "phase failed @qemu:///x: boom"},
		}},
		{"a screen lost later is a notice", NewState("desktop", true, true), then(toHere,
			row{in: ScreenShown{On: Workstation, Err: errBoom}, want: "notice: boom"},
			row{in: ScreenShown{On: Workstation}, want: ""},
		)},
		{"inputs that do not fit are refused", NewState("desktop", true, true), []row{
			{in: DisksPrepared{}, err: "unexpected"},
			{in: Begin{}, want: "Locate"},
			{in: Begin{}, err: "unexpected"},
			{in: MigrationEnded{}, err: "unexpected"},
			{in: LeaseTaken{Lease: held}, err: "unexpected"},
			{in: LeaseReleased{}, err: "unexpected"},
			{in: DisksUndone{}, err: "unexpected"},
			{in: DisksFinished{}, err: "unexpected"},
			{in: MigrationStarted{}, err: "unexpected"},
			{in: LeaseRenewed{Lease: held}, want: ""},
			{in: progress(switchover.PhasePrecopy), want: ""},
			{in: DisksProgressed{}, want: ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc.s, tc.rows) })
	}
}

// Where the VM runs, as the core keeps it, follows the moves that ended.
func TestCoreWhere(t *testing.T) {
	s := run(t, NewState("desktop", true, true), toHere)
	if s.Where != Workstation || s.Phase != event.Here || !s.Renewing || s.Lease != held {
		t.Fatalf("after the move here: %+v", s)
	}
	s = run(t, s, []row{
		{in: LeaseLost{Err: errBoom}, want: "DropLease; notice: boom; lease none"},
		{in: Quit{}, want: "Stop"},
	})
	if !s.Stopped() || !s.LeaseLost || s.Renewing {
		t.Fatalf("after the lease was lost and the user quit: %+v", s)
	}
}

// Checkpoints are taken on a clock while the VM runs here, one at a time,
// never during a move; a hand back asked for meanwhile waits for the one
// under way, and once the lease is lost they go on, for the server to keep
// as a branch.
func TestCoreCheckpoints(t *testing.T) {
	every := func() State {
		s := NewState("desktop", true, true)
		s.CheckpointEvery = 30 * time.Second
		return s
	}
	committed := CheckpointTaken{Checkpoint: event.Checkpoint{ID: "c1", Last: t0.Add(30 * time.Second)}}
	arrived := "phase running here @workstation; checkpoint next 22:00:30; ArmTimer 22:00:30"
	here := append(append([]row{}, toHere[:len(toHere)-1]...), row{in: DisksFinished{}, want: arrived})
	for _, tc := range []struct {
		name string
		s    State
		rows []row
	}{
		{"one every interval, the lease's expiry still watched", every(), then(here,
			row{in: Tick{}, at: 30 * time.Second, want: "checkpoint under way; TakeCheckpoint L1; ArmTimer 22:02:00"},
			row{in: Tick{}, at: 31 * time.Second, want: "ArmTimer 22:02:00"}, // one at a time
			row{in: committed, at: 40 * time.Second, want: "checkpoint next 22:01:10; ArmTimer 22:01:10"},
			row{in: committed, err: "unexpected"},
		)},
		{"a failed checkpoint is a notice, and the next one comes", every(), then(here,
			row{in: Tick{}, at: 30 * time.Second, want: "checkpoint under way; TakeCheckpoint L1; ArmTimer 22:02:00"},
			row{in: CheckpointTaken{Err: errBoom}, at: 35 * time.Second,
				want: "notice: checkpoint of desktop: boom; the VM runs on here, and the next checkpoint tries again; checkpoint next 22:01:05; ArmTimer 22:01:05"},
		)},
		{"a hand back waits for the checkpoint under way", every(), then(here,
			row{in: Tick{}, at: 30 * time.Second, want: "checkpoint under way; TakeCheckpoint L1; ArmTimer 22:02:00"},
			row{in: HandBack{}, want: "notice: a checkpoint is being sent: the hand back starts once it is committed"},
			row{in: committed, want: "checkpoint c1; phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
			row{in: Tick{}, at: 90 * time.Second, want: "ArmTimer 22:02:00"}, // none during the move
		)},
		{"a hand back ends the schedule", every(), then(here,
			row{in: HandBack{}, want: "checkpoint none due; phase moving disks @workstation workstation→server; PrepareDisks workstation→server"},
			row{in: Tick{}, at: 30 * time.Second, want: "ArmTimer 22:02:00"},
		)},
		{"the lease lost: checkpoints go on without it", every(), then(here,
			row{in: LeaseLost{Err: errBoom}, want: "DropLease; notice: boom; lease none"},
			row{in: Tick{}, at: 30 * time.Second, want: "checkpoint under way; TakeCheckpoint "},
		)},
		{"quitting waits for the checkpoint under way", every(), then(here,
			row{in: Tick{}, at: 30 * time.Second, want: "checkpoint under way; TakeCheckpoint L1; ArmTimer 22:02:00"},
			row{in: Quit{}, want: ""},
			row{in: committed, want: "StopRenewing; Stop"},
		)},
		{"a checkpoint kept for want of a link is sent again soon", func() State { s := every(); s.CheckpointEvery = 10 * time.Minute; return s }(), then(
			append(append([]row{}, toHere[:len(toHere)-1]...), row{in: DisksFinished{}, want: "phase running here @workstation; checkpoint next 22:10:00; ArmTimer 22:02:00"}),
			row{in: LeaseRenewed{Lease: Lease{ID: "L1", Holder: "laptop", Epoch: 1, Expires: t0.Add(20 * time.Minute)}}, want: "lease laptop 1; ArmTimer 22:10:00"},
			row{in: Tick{}, at: 10 * time.Minute, want: "checkpoint under way; TakeCheckpoint L1; ArmTimer 22:20:00"},
			row{in: CheckpointTaken{Err: fmt.Errorf("%w: no route to host", ErrQueued), Checkpoint: event.Checkpoint{Queued: t0.Add(10 * time.Minute)}}, at: 10*time.Minute + 5*time.Second,
				want: "notice: checkpoint of desktop: " + ErrQueued.Error() + ": no route to host; the VM runs on here; checkpoint next 22:10:35; ArmTimer 22:10:35"},
		)},
		{"a read-only checkout takes none", func() State { s := every(); s.Leased = false; return s }(), then(toServer,
			row{in: ScreenShown{On: Server}, want: "phase moving disks @server server→workstation; PrepareDisks server→workstation"},
			row{in: DisksPrepared{}, want: "phase copying @server server→workstation; StartMigration server→workstation"},
			row{in: MigrationStarted{}, want: ""},
			row{in: precopied, want: "switched precopy; ShowScreen workstation; phase moving disks @workstation server→workstation; FinishDisks server→workstation"},
			row{in: DisksFinished{}, want: "phase running here @workstation"},
			row{in: Tick{}, at: 30 * time.Second, want: ""},
		)},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc.s, tc.rows) })
	}
}
