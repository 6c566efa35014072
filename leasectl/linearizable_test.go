package leasectl

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

type raceOp struct {
	Kind, Holder, LeaseID, Parent string
}

type raceResult struct {
	ID    string
	Epoch uint64
	Err   error
}

// modelState is what the model keeps of an image between steps.
type modelState struct {
	Epoch uint64
	Lease *Lease
	Head  string
}

func sameOutcome(err, want error) bool {
	if err == nil || want == nil {
		return err == nil && want == nil
	}
	for _, e := range []error{ErrHeld, ErrExpired, ErrOrphaned, ErrNotHead, ErrRefused, ErrBadInput} {
		if errors.Is(want, e) {
			return errors.Is(err, e)
		}
	}
	return false
}

// leaseModel replays each operation through the pure state machine: the
// server's history must be explainable as one order of those steps.
var leaseModel = porcupine.Model{
	Init: func() any { return modelState{} },
	Step: func(st, in, out any) (bool, any) {
		m, op, res := st.(modelState), in.(raceOp), out.(raceResult)
		s := State{Epoch: m.Epoch, Head: m.Head}
		if m.Lease != nil {
			l := *m.Lease
			s.Lease = &l
		}
		var epoch uint64
		var err error
		switch op.Kind {
		case "acquire":
			var l Lease
			l, err = s.Acquire(op.Holder, time.Hour, t0, res.ID)
			epoch = l.Epoch
		case "steal":
			var l Lease
			l, err = s.Steal(op.Holder, "race", time.Hour, t0, res.ID)
			epoch = l.Epoch
		case "renew":
			var l Lease
			l, err = s.Renew(op.LeaseID, time.Hour, t0)
			epoch = l.Epoch
		case "release":
			err = s.Release(op.LeaseID, t0)
		case "commit":
			var c Commit
			c, err = s.Commit(CommitRequest{Parent: op.Parent, LeaseID: op.LeaseID, Holder: op.Holder, Manifest: root("r")}, t0, res.ID)
			epoch = c.Epoch
		}
		if !sameOutcome(err, res.Err) || (err == nil && epoch != res.Epoch) {
			return false, st
		}
		return true, modelState{Epoch: s.Epoch, Lease: s.Lease, Head: s.Head}
	},
	// By value: the lease is a pointer, and porcupine prunes its search by
	// states it has seen before.
	Equal: func(a, b any) bool {
		x, y := a.(modelState), b.(modelState)
		return x.Epoch == y.Epoch && x.Head == y.Head && (x.Lease == y.Lease || x.Lease != nil && y.Lease != nil && *x.Lease == *y.Lease)
	},
	DescribeOperation: func(in, out any) string { return fmt.Sprintf("%+v -> %+v", in, out) },
}

// TestRacingDevicesAreLinearizable has devices race to acquire, renew,
// steal, release and commit on one image, on each store, and checks the
// recorded history with porcupine against the state machine: never two
// live leases, never a commit under a stale epoch.
func TestRacingDevicesAreLinearizable(t *testing.T) {
	for name, open := range stores() {
		t.Run(name, func(t *testing.T) { raceAndCheck(t, &Service{Store: open(t)}) })
	}
}

func raceAndCheck(t *testing.T, sv *Service) {
	ctx := context.Background()
	sv.Create(ctx, "desktop")

	var mu sync.Mutex
	var history []porcupine.Operation
	var wg sync.WaitGroup
	for dev := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(dev), 7))
			holder := fmt.Sprintf("device-%d", dev)
			var lease, head string
			for range 40 {
				op := raceOp{Holder: holder, LeaseID: lease, Parent: head}
				switch r := rng.IntN(10); {
				case r < 2:
					op.Kind = "acquire"
				case r < 3:
					op.Kind = "renew"
				case r < 4:
					op.Kind = "steal"
				case r < 5:
					op.Kind = "release"
				default:
					op.Kind = "commit"
				}
				call := time.Now().UnixNano()
				var res raceResult
				switch op.Kind {
				case "acquire", "steal":
					var l Lease
					if op.Kind == "acquire" {
						l, res.Err = sv.Acquire(ctx, "desktop", holder, time.Hour)
					} else {
						l, res.Err = sv.Steal(ctx, "desktop", holder, "race", time.Hour)
					}
					res.ID, res.Epoch = l.ID, l.Epoch
					if res.Err == nil {
						lease = l.ID
					}
				case "renew":
					var l Lease
					l, res.Err = sv.Renew(ctx, "desktop", lease, time.Hour)
					res.ID, res.Epoch = l.ID, l.Epoch
				case "release":
					res.Err = sv.Release(ctx, "desktop", lease)
				case "commit":
					var c Commit
					c, res.Err = sv.Commit(ctx, "desktop", CommitRequest{Parent: head, LeaseID: lease, Holder: holder, Manifest: root("r")})
					res.ID, res.Epoch = c.ID, c.Epoch
					if res.Err == nil {
						head = c.ID
					} else if st, err := sv.Status(ctx, "desktop"); err == nil {
						head = st.Head // catch up, as a device would on refusal
					}
				}
				ret := time.Now().UnixNano()
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: dev, Input: op, Call: call, Output: res, Return: ret})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if r := porcupine.CheckOperationsTimeout(leaseModel, history, 60*time.Second); r != porcupine.Ok {
		t.Fatalf("the history of %d operations is not linearizable against the state machine (%v)", len(history), r)
	}
	st, _ := sv.Status(ctx, "desktop")
	if len(st.Commits) == 0 || st.Epoch < 2 {
		t.Fatalf("the race made %d commits at epoch %d: too tame to prove anything", len(st.Commits), st.Epoch)
	}
	t.Logf("%d operations, %d commits, final epoch %d: linearizable", len(history), len(st.Commits), st.Epoch)
}

func TestCheckerCatchesAStaleEpoch(t *testing.T) {
	// Two devices both told they hold epoch 1: no order explains it.
	history := []porcupine.Operation{
		{ClientId: 0, Input: raceOp{Kind: "acquire", Holder: "a"}, Call: 0, Output: raceResult{ID: "L1", Epoch: 1}, Return: 10},
		{ClientId: 1, Input: raceOp{Kind: "steal", Holder: "b"}, Call: 20, Output: raceResult{ID: "L2", Epoch: 1}, Return: 30},
	}
	if porcupine.CheckOperations(leaseModel, history) {
		t.Fatal("a steal that kept the old epoch passed the checker")
	}
}
