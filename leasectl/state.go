package leasectl

import (
	"errors"
	"fmt"
	"time"
)

// State is everything the server knows about one image; every operation
// is a plain function of it, the time and its arguments.
type State struct {
	Image    string   `json:"image"`
	Epoch    uint64   `json:"epoch"` // of the newest lease ever granted
	Lease    *Lease   `json:"lease,omitempty"`
	Head     string   `json:"head"` // newest commit's ID; "" before the first
	Commits  []Commit `json:"commits"`
	Log      []Event  `json:"log"`
	BranchOf string   `json:"branch_of,omitempty"` // image@commit this one was branched from
	// How many commits and events are stored: a store keeps the history
	// as records of their own, so that a change writes only what it adds.
	NCommits int `json:"n_commits"`
	NEvents  int `json:"n_events"`
}

// split takes out what a change appended to the history and leaves the
// head record, which is all a Store rewrites per change: the cost of a
// change does not grow with the image's history.
func (s *State) split() (head State, commits []Commit, events []Event) {
	head, commits, events = *s, s.Commits, s.Log
	head.Commits, head.Log = nil, nil
	head.NCommits += len(commits)
	head.NEvents += len(events)
	return head, commits, events
}

// Lease is a time-limited right to commit to an image.
type Lease struct {
	ID      string    `json:"id"`
	Holder  string    `json:"holder"`
	Epoch   uint64    `json:"epoch"`
	Expires time.Time `json:"expires"`
}

// Commit is one consistent checkpoint of an image.
type Commit struct {
	ID       string    `json:"id"`
	Parent   string    `json:"parent"`
	Epoch    uint64    `json:"epoch"` // the lease's, 0 from a read-only checkout
	Holder   string    `json:"holder"`
	Manifest Manifest  `json:"manifest"`
	Time     time.Time `json:"time"`
}

// Manifest names a commit's content: opaque here (syncengine's root).
type Manifest struct {
	Root string            `json:"root"`
	Meta map[string]string `json:"meta,omitempty"`
}

// Limits on a manifest: it names content, it does not carry it.
const (
	maxRoot     = 128
	maxMetaKeys = 32
	maxMeta     = 16 << 10 // bytes of keys and values together
)

func (m Manifest) check() error {
	if m.Root == "" || len(m.Root) > maxRoot {
		return fmt.Errorf("%w: a manifest root of 1 to %d bytes is needed, got %d", ErrBadInput, maxRoot, len(m.Root))
	}
	size := 0
	for k, v := range m.Meta {
		size += len(k) + len(v)
	}
	if len(m.Meta) > maxMetaKeys || size > maxMeta {
		return fmt.Errorf("%w: manifest metadata is %d entries, %d bytes; at most %d and %d: keep content in the chunk store", ErrBadInput, len(m.Meta), size, maxMetaKeys, maxMeta)
	}
	return nil
}

// check is what every commit and branch request needs.
func (req CommitRequest) check() error {
	if req.Holder == "" {
		return fmt.Errorf("%w: a commit needs a holder", ErrBadInput)
	}
	return req.Manifest.check()
}

// Event is one line of an image's history.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // acquire, renew, release, steal, orphan, commit, branch, checkout
	Holder string    `json:"holder,omitempty"`
	Epoch  uint64    `json:"epoch,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// Checkout is what a reader or a lease holder saw when it began: a commit
// made from it later must still build on that head.
type Checkout struct {
	Image string `json:"image"`
	Head  string `json:"head"`
}

// Errors the state machine refuses with; the HTTP layer maps each to a
// status and the client back to the same value.
var (
	ErrHeld     = errors.New("the image is leased to another holder")
	ErrExpired  = errors.New("the lease has expired")
	ErrOrphaned = errors.New("the lease was stolen or released")
	ErrNotHead  = errors.New("the parent is not the image's head")
	ErrRefused  = errors.New("commit refused: the image moved on or is leased; save it as a branch")
	ErrBadInput = errors.New("bad request")
	ErrNoImage  = errors.New("no such image")
	ErrExists   = errors.New("the image exists already")
)

// HeldError says who holds the lease and until when.
type HeldError struct {
	Holder  string
	Expires time.Time
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%v: %s holds it until %s", ErrHeld, e.Holder, e.Expires.UTC().Format(time.RFC3339))
}
func (e *HeldError) Unwrap() error { return ErrHeld }

func (s *State) live(now time.Time) *Lease {
	if s.Lease != nil && now.Before(s.Lease.Expires) {
		return s.Lease
	}
	return nil
}

func (s *State) event(now time.Time, kind, holder string, epoch uint64, detail string) {
	s.Log = append(s.Log, Event{Time: now, Kind: kind, Holder: holder, Epoch: epoch, Detail: detail})
}

func (s *State) grant(holder string, ttl time.Duration, now time.Time, id string) Lease {
	s.Epoch++
	l := Lease{ID: id, Holder: holder, Epoch: s.Epoch, Expires: now.Add(ttl)}
	s.Lease = &l
	return l
}

func checkTTL(ttl time.Duration) error {
	if ttl <= 0 || ttl > 24*time.Hour {
		return fmt.Errorf("%w: ttl %v must be between 0 and 24h", ErrBadInput, ttl)
	}
	return nil
}

// Acquire grants a lease with a new epoch, unless another holder's lease
// is live.
func (s *State) Acquire(holder string, ttl time.Duration, now time.Time, id string) (Lease, error) {
	if holder == "" {
		return Lease{}, fmt.Errorf("%w: no holder named", ErrBadInput)
	}
	if err := checkTTL(ttl); err != nil {
		return Lease{}, err
	}
	if l := s.live(now); l != nil {
		return Lease{}, &HeldError{Holder: l.Holder, Expires: l.Expires}
	}
	l := s.grant(holder, ttl, now, id)
	s.event(now, "acquire", holder, l.Epoch, "")
	return l, nil
}

// current checks that leaseID is the image's live lease.
func (s *State) current(leaseID string, now time.Time) (*Lease, error) {
	if s.Lease == nil || s.Lease.ID != leaseID {
		return nil, ErrOrphaned
	}
	if !now.Before(s.Lease.Expires) {
		return nil, ErrExpired
	}
	return s.Lease, nil
}

// Renew extends a live lease.
func (s *State) Renew(leaseID string, ttl time.Duration, now time.Time) (Lease, error) {
	if err := checkTTL(ttl); err != nil {
		return Lease{}, err
	}
	l, err := s.current(leaseID, now)
	if err != nil {
		return Lease{}, err
	}
	l.Expires = now.Add(ttl)
	return *l, nil
}

// Release ends a live lease early.
func (s *State) Release(leaseID string, now time.Time) error {
	l, err := s.current(leaseID, now)
	if err != nil {
		return err
	}
	s.event(now, "release", l.Holder, l.Epoch, "")
	s.Lease = nil
	return nil
}

// Steal ends whatever lease there is (its holder is orphaned) and grants
// a new one with a higher epoch.
func (s *State) Steal(holder, reason string, ttl time.Duration, now time.Time, id string) (Lease, error) {
	if holder == "" || reason == "" {
		return Lease{}, fmt.Errorf("%w: a steal needs a holder and a reason", ErrBadInput)
	}
	if err := checkTTL(ttl); err != nil {
		return Lease{}, err
	}
	if old := s.Lease; old != nil {
		s.event(now, "orphan", old.Holder, old.Epoch, "stolen by "+holder)
	}
	l := s.grant(holder, ttl, now, id)
	s.event(now, "steal", holder, l.Epoch, reason)
	return l, nil
}

// Checkout notes the head a reader starts from; it takes no lease and
// never blocks.
func (s *State) Checkout() Checkout { return Checkout{Image: s.Image, Head: s.Head} }

// CommitRequest is one commit as a client asks for it.
type CommitRequest struct {
	Parent   string   `json:"parent"`
	LeaseID  string   `json:"lease_id,omitempty"` // empty from a read-only checkout
	Holder   string   `json:"holder"`
	Manifest Manifest `json:"manifest"`
}

// Commit appends a commit. With the live, current lease the parent must be
// the head. Without one (an expired or stolen lease, or a read-only
// checkout) it is accepted only if the head is still the parent and no
// lease is outstanding; otherwise ErrRefused, and the client saves it as a
// branch instead.
func (s *State) Commit(req CommitRequest, now time.Time, id string) (Commit, error) {
	if err := req.check(); err != nil {
		return Commit{}, err
	}
	var epoch uint64
	if l, err := s.current(req.LeaseID, now); err == nil && req.LeaseID != "" {
		if req.Parent != s.Head {
			return Commit{}, fmt.Errorf("%w: parent %q, head %q", ErrNotHead, req.Parent, s.Head)
		}
		epoch = l.Epoch
	} else {
		if req.Parent != s.Head || s.live(now) != nil {
			return Commit{}, ErrRefused
		}
		if req.LeaseID != "" && s.Lease != nil && s.Lease.ID == req.LeaseID {
			epoch = s.Lease.Epoch // expired, yet nothing happened since
		}
	}
	c := Commit{ID: id, Parent: req.Parent, Epoch: epoch, Holder: req.Holder, Manifest: req.Manifest, Time: now}
	s.Commits = append(s.Commits, c)
	s.Head = id
	s.event(now, "commit", req.Holder, epoch, id)
	return c, nil
}

// Branch starts a new image from a commit of s with the refused state, so
// that work is never lost. dst must be new.
func Branch(src, dst *State, req CommitRequest, now time.Time, id string) (Commit, error) {
	if err := req.check(); err != nil {
		return Commit{}, err
	}
	if req.Parent != "" && !src.has(req.Parent) {
		return Commit{}, fmt.Errorf("%w: %s has no commit %q", ErrBadInput, src.Image, req.Parent)
	}
	dst.BranchOf = src.Image + "@" + req.Parent
	c := Commit{ID: id, Parent: req.Parent, Holder: req.Holder, Manifest: req.Manifest, Time: now}
	dst.Commits = append(dst.Commits, c)
	dst.Head = id
	dst.event(now, "branch", req.Holder, 0, "from "+dst.BranchOf)
	src.event(now, "branch", req.Holder, 0, "to "+dst.Image)
	return c, nil
}

func (s *State) has(commit string) bool {
	for _, c := range s.Commits {
		if c.ID == commit {
			return true
		}
	}
	return false
}
