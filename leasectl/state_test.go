package leasectl

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

const ttl = time.Minute

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

func root(r string) Manifest { return Manifest{Root: r} }

// step is one operation on an image and what must come of it.
type step struct {
	op      string // acquire, renew, release, steal, commit, commit-ro
	who     string
	at      int    // seconds after t0
	lease   string // lease ID used (renew, release, commit) or granted (acquire, steal)
	parent  string
	id      string // commit ID
	wantErr error
}

func run(t *testing.T, steps []step) *State {
	t.Helper()
	s := &State{Image: "desktop"}
	for i, st := range steps {
		var err error
		now := at(st.at)
		switch st.op {
		case "acquire":
			_, err = s.Acquire(st.who, ttl, now, st.lease)
		case "renew":
			_, err = s.Renew(st.lease, ttl, now)
		case "release":
			err = s.Release(st.lease, now)
		case "steal":
			_, err = s.Steal(st.who, "laptop lost", ttl, now, st.lease)
		case "commit", "commit-ro":
			_, err = s.Commit(CommitRequest{Parent: st.parent, LeaseID: st.lease, Holder: st.who, Manifest: root("r" + st.id)}, now, st.id)
		default:
			t.Fatalf("unknown op %q", st.op)
		}
		if !errors.Is(err, st.wantErr) || (err != nil) != (st.wantErr != nil) {
			t.Fatalf("step %d (%s by %s at %ds): err %v, want %v", i, st.op, st.who, st.at, err, st.wantErr)
		}
	}
	return s
}

func TestLeaseStateMachine(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
		check func(*testing.T, *State)
	}{
		{"acquire, commit, renew, commit, release", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "commit", who: "laptop", at: 10, lease: "L1", parent: "", id: "c1"},
			{op: "renew", at: 50, lease: "L1"},
			{op: "commit", who: "laptop", at: 100, lease: "L1", parent: "c1", id: "c2"},
			{op: "release", at: 101, lease: "L1"},
		}, func(t *testing.T, s *State) {
			if s.Head != "c2" || len(s.Commits) != 2 || s.Lease != nil || s.Commits[1].Epoch != 1 {
				t.Errorf("state %+v", s)
			}
		}},
		{"a live lease refuses another holder", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "acquire", who: "desktop", at: 30, lease: "L2", wantErr: ErrHeld},
		}, nil},
		{"an expired lease lets another holder in with a higher epoch", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "acquire", who: "desktop", at: 60, lease: "L2"},
		}, func(t *testing.T, s *State) {
			if s.Lease.Holder != "desktop" || s.Lease.Epoch != 2 {
				t.Errorf("lease %+v, want desktop's at epoch 2", s.Lease)
			}
		}},
		{"renew refused once expired", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "renew", at: 61, lease: "L1", wantErr: ErrExpired},
		}, nil},
		{"renew and release refused once stolen", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "steal", who: "desktop", at: 5, lease: "L2"},
			{op: "renew", at: 6, lease: "L1", wantErr: ErrOrphaned},
			{op: "release", at: 6, lease: "L1", wantErr: ErrOrphaned},
		}, func(t *testing.T, s *State) {
			if s.Lease.ID != "L2" || s.Lease.Epoch != 2 {
				t.Errorf("lease %+v", s.Lease)
			}
			kinds := ""
			for _, e := range s.Log {
				kinds += e.Kind + " "
			}
			if kinds != "acquire orphan steal " {
				t.Errorf("log kinds %q", kinds)
			}
		}},
		{"release refused for an unknown lease", []step{
			{op: "release", lease: "nope", wantErr: ErrOrphaned},
		}, nil},
		{"a commit with a live lease must build on the head", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "commit", who: "laptop", at: 1, lease: "L1", parent: "", id: "c1"},
			{op: "commit", who: "laptop", at: 2, lease: "L1", parent: "", id: "c2", wantErr: ErrNotHead},
		}, nil},
		{"a stolen lease's commit is refused", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "steal", who: "desktop", at: 5, lease: "L2"},
			{op: "commit", who: "laptop", at: 6, lease: "L1", parent: "", id: "c1", wantErr: ErrRefused},
		}, func(t *testing.T, s *State) {
			if len(s.Commits) != 0 {
				t.Error("a refused commit was stored")
			}
		}},
		{"an expired lease may still commit if nothing happened since", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "commit", who: "laptop", at: 90, lease: "L1", parent: "", id: "c1"},
		}, func(t *testing.T, s *State) {
			if s.Head != "c1" || s.Commits[0].Epoch != 1 {
				t.Errorf("state %+v", s)
			}
		}},
		{"an expired lease's commit is refused after another commit", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "acquire", who: "desktop", at: 61, lease: "L2"},
			{op: "commit", who: "desktop", at: 62, lease: "L2", parent: "", id: "c1"},
			{op: "release", at: 63, lease: "L2"},
			{op: "commit", who: "laptop", at: 64, lease: "L1", parent: "", id: "c2", wantErr: ErrRefused},
		}, nil},
		{"a read-only checkout commits only when nothing moved and nobody holds a lease", []step{
			{op: "commit-ro", who: "reader", at: 1, parent: "", id: "c1"},
			{op: "acquire", who: "laptop", at: 2, lease: "L1"},
			{op: "commit-ro", who: "reader", at: 3, parent: "c1", id: "c2", wantErr: ErrRefused},
		}, nil},
		{"release refused once expired", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "release", at: 60, lease: "L1", wantErr: ErrExpired},
		}, nil},
		{"an expired lease's commit is refused while another lease is live", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "acquire", who: "desktop", at: 61, lease: "L2"},
			{op: "commit", who: "laptop", at: 62, lease: "L1", parent: "", id: "c1", wantErr: ErrRefused},
		}, nil},
		{"a released lease may commit if nothing happened since", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "release", at: 1, lease: "L1"},
			{op: "commit", who: "laptop", at: 2, lease: "L1", parent: "", id: "c1"},
		}, func(t *testing.T, s *State) {
			if s.Head != "c1" || s.Commits[0].Epoch != 0 {
				t.Errorf("state %+v", s)
			}
		}},
		{"a read-only checkout's commit is refused after another commit", []step{
			{op: "acquire", who: "laptop", lease: "L1"},
			{op: "commit", who: "laptop", at: 1, lease: "L1", parent: "", id: "c1"},
			{op: "release", at: 2, lease: "L1"},
			{op: "commit-ro", who: "reader", at: 3, parent: "", id: "c2", wantErr: ErrRefused},
		}, func(t *testing.T, s *State) {
			if s.Head != "c1" || len(s.Commits) != 1 {
				t.Errorf("state %+v", s)
			}
		}},
		{"bad input", []step{
			{op: "acquire", who: "", lease: "L1", wantErr: ErrBadInput},
			{op: "commit-ro", who: "", id: "c1", wantErr: ErrBadInput},
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := run(t, tc.steps)
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

func TestBadTTLsAndStealsAreRefused(t *testing.T) {
	s := &State{Image: "desktop"}
	l, _ := s.Acquire("laptop", ttl, t0, "L1")
	before := fmt.Sprintf("%+v %+v", *s, *s.Lease)
	for name, err := range map[string]error{
		"acquire ttl 0":      second(s.Acquire("desktop", 0, t0, "L2")),
		"acquire ttl 25h":    second(s.Acquire("desktop", 25*time.Hour, t0, "L2")),
		"renew ttl negative": second(s.Renew(l.ID, -time.Second, t0)),
		"steal no reason":    second(s.Steal("desktop", "", ttl, t0, "L2")),
		"steal no holder":    second(s.Steal("", "lost", ttl, t0, "L2")),
	} {
		if !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: %v, want bad input", name, err)
		}
	}
	if after := fmt.Sprintf("%+v %+v", *s, *s.Lease); after != before {
		t.Errorf("refusals changed the state:\n%s\n%s", before, after)
	}
}

func second[T any](_ T, err error) error { return err }

func TestHeldErrorSaysWhoAndUntil(t *testing.T) {
	s := &State{Image: "desktop"}
	s.Acquire("laptop", ttl, t0, "L1")
	_, err := s.Acquire("desktop", ttl, t0, "L2")
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != "laptop" || !held.Expires.Equal(t0.Add(ttl)) {
		t.Fatalf("err %v, want laptop's lease until %v", err, t0.Add(ttl))
	}
}

func TestBranchKeepsRefusedWork(t *testing.T) {
	src := &State{Image: "desktop"}
	src.Acquire("laptop", ttl, t0, "L1")
	src.Commit(CommitRequest{LeaseID: "L1", Holder: "laptop", Manifest: root("a")}, t0, "c1")
	src.Steal("desktop", "lost", ttl, at(1), "L2")
	req := CommitRequest{Parent: "c1", LeaseID: "L1", Holder: "laptop", Manifest: root("b")}
	if _, err := src.Commit(req, at(2), "c2"); !errors.Is(err, ErrRefused) {
		t.Fatalf("commit from the stolen lease: %v", err)
	}
	dst := &State{Image: "desktop-laptop"}
	c, err := Branch(src, dst, req, at(3), "c2")
	if err != nil {
		t.Fatal(err)
	}
	if dst.Head != "c2" || c.Parent != "c1" || dst.BranchOf != "desktop@c1" {
		t.Errorf("branch %+v", dst)
	}
	if _, err := Branch(src, &State{Image: "x"}, CommitRequest{Parent: "zz", Holder: "a", Manifest: root("r")}, t0, "c3"); !errors.Is(err, ErrBadInput) {
		t.Errorf("branch from a missing commit: %v", err)
	}
}

func TestManifestLimits(t *testing.T) {
	many := map[string]string{}
	for i := range maxMetaKeys + 1 {
		many[fmt.Sprint(i)] = "v"
	}
	for _, tc := range []struct {
		name string
		m    Manifest
		ok   bool
	}{
		{"root only", Manifest{Root: strings.Repeat("a", 64)}, true},
		{"no root", Manifest{Meta: map[string]string{"k": "v"}}, false},
		{"root too long", Manifest{Root: strings.Repeat("a", maxRoot+1)}, false},
		{"meta at the limit", Manifest{Root: "r", Meta: map[string]string{"k": strings.Repeat("v", maxMeta-1)}}, true},
		{"meta too big", Manifest{Root: "r", Meta: map[string]string{"k": strings.Repeat("v", maxMeta)}}, false},
		{"too many keys", Manifest{Root: "r", Meta: many}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &State{Image: "desktop"}
			_, err := s.Commit(CommitRequest{Holder: "reader", Manifest: tc.m}, t0, "c1")
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadInput)) {
				t.Fatalf("commit: %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && (len(s.Commits) != 0 || s.Head != "" || len(s.Log) != 0) {
				t.Fatalf("a refused manifest changed the state: %+v", s)
			}
		})
	}
}
