package checkout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/switchover"
)

// journal records what the fakes were asked to do, in order.
type journal struct {
	mu  sync.Mutex
	log []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.log = append(j.log, fmt.Sprintf(format, args...))
}

func (j *journal) entries() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.log)
}

func (j *journal) waitFor(t *testing.T, entry string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if slices.Contains(j.entries(), entry) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("never did %q; did %q", entry, j.entries())
		}
	}
}

// before fails unless every entry happened, each before the next.
func (j *journal) before(t *testing.T, entries ...string) {
	t.Helper()
	log := j.entries()
	last := -1
	for _, e := range entries {
		i := slices.Index(log, e)
		if i < 0 || i < last {
			t.Fatalf("want %q in this order, did %q", entries, log)
		}
		last = i
	}
}

type fakeHost struct {
	name string
	runs bool
	j    *journal
	// hold keeps migrations from this host running until aborted; progress
	// is how many reports each sends first.
	hold     bool
	progress int
}

func (h *fakeHost) URI() string                                { return "test:///" + h.name }
func (h *fakeHost) Runs(context.Context, string) (bool, error) { return h.runs, nil }
func (h *fakeHost) Screen(_ context.Context, domain string) (event.Dial, error) {
	h.j.add("screen %s", h.name)
	return func(context.Context) (net.Conn, error) { return nil, errors.New("no screen in tests") }, nil
}

func (h *fakeHost) MigrateTo(ctx context.Context, to Host, domain string, disks Prepared) (Migration, error) {
	h.j.add("migrate %s→%s", h.name, to.(*fakeHost).name)
	return &fakeMigration{ctx: ctx, h: h, aborted: make(chan struct{})}, nil
}

type fakeMigration struct {
	ctx     context.Context
	h       *fakeHost
	once    sync.Once
	aborted chan struct{}
}

func (m *fakeMigration) Run(progress func(event.Progress)) (Result, error) {
	for i := range m.h.progress {
		progress(event.Progress{Sample: switchover.Sample{Phase: switchover.PhasePrecopy, Iteration: uint64(i)}})
	}
	if m.h.hold {
		select {
		case <-m.aborted:
		case <-m.ctx.Done():
			m.h.j.add("migration cancelled")
		}
		return Result{}, fmt.Errorf("%w: it keeps running on the %s", ErrAborted, m.h.name)
	}
	return Result{Mode: "precopy", Downtime: 40 * time.Millisecond, DowntimeKnown: true}, nil
}

func (m *fakeMigration) PostCopy() error { return errors.New("no post-copy in tests") }
func (m *fakeMigration) Plan() string    { return "pre-copy, in the tests' fake" }
func (m *fakeMigration) Abort() error {
	m.h.j.add("abort")
	m.once.Do(func() { close(m.aborted) })
	return nil
}

type fakeKeeper struct {
	j        *journal
	mu       sync.Mutex
	renewing int
	lose     chan error // a send ends the renewal with that error
}

func (k *fakeKeeper) Acquire(context.Context) (Lease, error) {
	k.j.add("acquire")
	return Lease{ID: "L1", Holder: "laptop", Epoch: 1, Expires: time.Now().Add(time.Hour)}, nil
}

func (k *fakeKeeper) Renew(ctx context.Context, l Lease, renewed func(Lease)) error {
	k.mu.Lock()
	k.renewing++
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.renewing--
		k.mu.Unlock()
	}()
	k.j.add("renew")
	l.Expires = l.Expires.Add(time.Minute)
	renewed(l)
	select {
	case <-ctx.Done():
		k.j.add("renew stopped")
		return ctx.Err()
	case err := <-k.lose:
		return err
	}
}

func (k *fakeKeeper) Release(context.Context, Lease) error {
	k.mu.Lock()
	renewing := k.renewing
	k.mu.Unlock()
	k.j.add("release (renewing %d)", renewing)
	return nil
}

type fakeDisks struct{ j *journal }

func (d fakeDisks) Prepare(_ context.Context, m Move, report func(DiskProgress)) (Prepared, error) {
	d.j.add("prepare %s→%s", m.From, m.To)
	report(DiskProgress{Step: "receiving", Disk: "vda", Done: 1, Total: 2})
	return fakePrepared{d.j, m}, nil
}

type fakePrepared struct {
	j *journal
	m Move
}

func (p fakePrepared) Finish(context.Context) error {
	p.j.add("finish %s→%s", p.m.From, p.m.To)
	return nil
}

func (p fakePrepared) Undo(context.Context) error {
	p.j.add("undo %s→%s", p.m.From, p.m.To)
	return nil
}

type rig struct {
	j        *journal
	srv, ws  *fakeHost
	keeper   *fakeKeeper
	co       *Checkout
	cancel   context.CancelFunc
	ran      chan struct{}
	mu       sync.Mutex
	events   []event.Event
	reading  chan struct{} // closed: the subscriber starts reading
	readDone chan struct{}
}

// newRig runs a checkout on fakes as setup left them; the UI reads its
// events once read is closed (at once when read is nil).
func newRig(t *testing.T, read chan struct{}, setup func(*rig)) *rig {
	j := &journal{}
	r := &rig{j: j,
		srv:      &fakeHost{name: "server", runs: true, j: j},
		ws:       &fakeHost{name: "workstation", j: j},
		keeper:   &fakeKeeper{j: j, lose: make(chan error)},
		ran:      make(chan struct{}),
		reading:  read,
		readDone: make(chan struct{}),
	}
	if setup != nil {
		setup(r)
	}
	r.co = New(Config{Domain: "desktop", Server: r.srv, Workstation: r.ws, Lease: r.keeper, Disks: fakeDisks{j}})
	r.start(t)
	return r
}

func (r *rig) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.ran)
		if err := r.co.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	go func() {
		defer close(r.readDone)
		if r.reading != nil {
			<-r.reading
		}
		for ev := range r.co.Events() {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.ran:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

func (r *rig) phases() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if p, ok := e.(event.PhaseChanged); ok {
			out = append(out, string(p.Phase))
		}
	}
	return out
}

func (r *rig) count(match func(event.Event) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if match(e) {
			n++
		}
	}
	return n
}

func (r *rig) waitPhase(t *testing.T, p event.Phase, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got := 0
		for _, x := range r.phases() {
			if x == string(p) {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("phase %q never came (%d times); phases %q; did %q", p, n, r.phases(), r.j.entries())
		}
	}
}

func (r *rig) quit(t *testing.T) {
	t.Helper()
	if err := r.co.Quit(); err != nil {
		t.Fatalf("quit: %v", err)
	}
	select {
	case <-r.ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Quit")
	}
	<-r.readDone
}

func TestDriverThereAndBack(t *testing.T) {
	r := newRig(t, nil, nil)
	r.waitPhase(t, event.Here, 1)
	if err := r.co.HandBack(); err != nil {
		t.Fatal(err)
	}
	r.waitPhase(t, event.OnServer, 1)
	r.quit(t)
	// The lease before anything moves; the disks around each migration;
	// the lease released after the hand back, once renewing has stopped.
	r.j.before(t, "screen server", "acquire", "prepare server→workstation", "migrate server→workstation",
		"finish server→workstation", "prepare workstation→server", "migrate workstation→server", "finish workstation→server",
		"renew stopped", "release (renewing 0)")
	r.j.before(t, "acquire", "migrate server→workstation", "screen workstation", "prepare workstation→server")
	if slices.ContainsFunc(r.j.entries(), func(e string) bool { return strings.HasPrefix(e, "undo") || e == "abort" }) {
		t.Errorf("a trip that went well undid or aborted something: %q", r.j.entries())
	}
	want := []string{"taking the lease", "moving disks", "copying", "moving disks", "running here",
		"moving disks", "handing back", "moving disks", "on the server"}
	if got := r.phases(); !slices.Equal(got, want) {
		t.Errorf("phases %q, want %q", got, want)
	}
	if n := r.count(func(e event.Event) bool { _, ok := e.(event.Screen); return ok }); n != 3 {
		t.Errorf("%d screen events, want 3 (server, workstation, server)", n)
	}
	if n := r.count(func(e event.Event) bool { l, ok := e.(event.LeaseChanged); return ok && l.Holder == "" }); n != 1 {
		t.Errorf("the lease was shown gone %d times, want once", n)
	}
	if err := r.co.HandBack(); err == nil {
		t.Error("a command after the checkout ended was taken")
	}
}

func TestDriverAbortUndoesThenReleases(t *testing.T) {
	r := newRig(t, nil, func(r *rig) { r.srv.hold = true })
	r.j.waitFor(t, "migrate server→workstation")
	r.waitPhase(t, event.Copying, 1)
	if err := r.co.HandBack(); !errors.Is(err, ErrNotHere) {
		t.Errorf("hand back mid-migration: %v, want %v", err, ErrNotHere)
	}
	if err := r.co.Abort(); err != nil {
		t.Fatal(err)
	}
	r.waitPhase(t, event.Aborted, 1)
	r.j.waitFor(t, "release (renewing 0)")
	r.j.before(t, "acquire", "prepare server→workstation", "migrate server→workstation", "abort", "undo server→workstation", "release (renewing 0)")
	if slices.Contains(r.j.entries(), "finish server→workstation") {
		t.Errorf("an aborted move finished its disks: %q", r.j.entries())
	}
	r.quit(t)
}

func TestDriverNeverWaitsForASlowUI(t *testing.T) {
	read := make(chan struct{})
	r := newRig(t, read, func(r *rig) { r.srv.progress = 1000 })
	// Nobody reads events, yet the checkout moves the VM all the way.
	r.j.waitFor(t, "finish server→workstation")
	close(read)
	r.waitPhase(t, event.Here, 1)
	want := []string{"taking the lease", "moving disks", "copying", "moving disks", "running here"}
	if got := r.phases(); !slices.Equal(got, want) {
		t.Errorf("phases %q, want every one: %q", got, want)
	}
	n := r.count(func(e event.Event) bool { _, ok := e.(event.Progress); return ok })
	if n < 1 || n > 2 {
		t.Errorf("%d progress reports reached a UI that read none while 1000 were made; want the newest only", n)
	}
	r.mu.Lock()
	var last event.Progress
	for _, e := range r.events {
		if p, ok := e.(event.Progress); ok {
			last = p
		}
	}
	r.mu.Unlock()
	if last.Sample.Iteration != 999 {
		t.Errorf("the UI's last report is number %d, want the newest (999)", last.Sample.Iteration)
	}
	r.quit(t)
}

func TestDriverStopsEveryGoroutineWhenItsContextEnds(t *testing.T) {
	r := newRig(t, nil, func(r *rig) { r.srv.hold = true })
	r.j.waitFor(t, "migrate server→workstation")
	r.cancel()
	select {
	case <-r.ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	<-r.readDone // Events is closed
	r.j.before(t, "migrate server→workstation", "abort", "undo server→workstation", "release (renewing 0)")
	r.keeper.mu.Lock()
	renewing := r.keeper.renewing
	r.keeper.mu.Unlock()
	if renewing != 0 {
		t.Errorf("%d renewals still run after Run returned", renewing)
	}
}

func TestDriverGraceCancelsAStuckUnwind(t *testing.T) {
	j := &journal{}
	srv := &fakeHost{name: "server", runs: true, j: j, hold: true}
	ws := &fakeHost{name: "workstation", j: j}
	// The migration ignores aborts: only the grace's cancel ends it.
	co := New(Config{Domain: "desktop", Server: stubborn{srv}, Workstation: ws, Disks: fakeDisks{j}, Grace: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); co.Run(ctx) }()
	go func() {
		for range co.Events() {
		}
	}()
	j.waitFor(t, "migrate server→workstation")
	cancel()
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the grace")
	}
	j.before(t, "abort ignored", "migration cancelled", "undo server→workstation")
}

// stubborn's migrations ignore Abort.
type stubborn struct{ *fakeHost }

func (s stubborn) MigrateTo(ctx context.Context, to Host, domain string, disks Prepared) (Migration, error) {
	m, err := s.fakeHost.MigrateTo(ctx, to, domain, disks)
	return stubbornMigration{m.(*fakeMigration)}, err
}

type stubbornMigration struct{ *fakeMigration }

func (m stubbornMigration) Abort() error {
	m.h.j.add("abort ignored")
	return nil
}

func TestDriverLostLeaseHereReleasesNothing(t *testing.T) {
	r := newRig(t, nil, nil)
	r.waitPhase(t, event.Here, 1)
	lost := errors.New("lost the lease on desktop: stolen")
	r.keeper.lose <- lost
	for deadline := time.Now().Add(5 * time.Second); r.count(func(e event.Event) bool { n, ok := e.(event.Notice); return ok && n.Err == lost }) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the lost lease was never told")
		}
	}
	if err := r.co.HandBack(); err != nil {
		t.Fatal(err)
	}
	r.waitPhase(t, event.OnServer, 1)
	r.quit(t)
	if slices.ContainsFunc(r.j.entries(), func(e string) bool { return strings.HasPrefix(e, "release") }) {
		t.Errorf("a lost lease was released: %q", r.j.entries())
	}
}

func TestDriverView(t *testing.T) {
	j := &journal{}
	co := View(&fakeHost{name: "server", runs: true, j: j}, "desktop")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { defer close(ran); co.Run(ctx) }()
	var got []event.Event
	for ev := range co.Events() {
		got = append(got, ev)
		if _, ok := ev.(event.PhaseChanged); ok {
			break
		}
	}
	if len(got) != 2 {
		t.Fatalf("events %v, want the screen and the phase", got)
	}
	if s, ok := got[0].(event.Screen); !ok || s.URI != "test:///server" || s.Dial == nil {
		t.Errorf("first event %#v, want the server's screen", got[0])
	}
	if p := got[1].(event.PhaseChanged); p.Phase != event.Viewing || p.Host != "test:///server" {
		t.Errorf("phase %+v, want viewing on test:///server", p)
	}
	if err := co.HandBack(); !errors.Is(err, ErrViewOnly) {
		t.Errorf("hand back of a view: %v", err)
	}
	if err := co.Quit(); err != nil {
		t.Fatal(err)
	}
	<-ran
	if err := co.Run(ctx); err == nil {
		t.Error("a checkout ran twice")
	}
}

// shortKeeper grants a lease that renewals never reach.
type shortKeeper struct {
	fakeKeeper
	ttl time.Duration
}

func (k *shortKeeper) Acquire(context.Context) (Lease, error) {
	k.j.add("acquire")
	return Lease{ID: "L1", Holder: "laptop", Epoch: 1, Expires: time.Now().Add(k.ttl)}, nil
}

func (k *shortKeeper) Renew(ctx context.Context, l Lease, renewed func(Lease)) error {
	<-ctx.Done() // the server never answers
	k.j.add("renew stopped")
	return ctx.Err()
}

// ctxHost remembers the context its migrations run under.
type ctxHost struct {
	*fakeHost
	mu  sync.Mutex
	ctx context.Context
}

func (h *ctxHost) MigrateTo(ctx context.Context, to Host, domain string, disks Prepared) (Migration, error) {
	h.mu.Lock()
	h.ctx = ctx
	h.mu.Unlock()
	return h.fakeHost.MigrateTo(ctx, to, domain, disks)
}

func TestDriverLeaseExpiringMidMigrationStopsTheMove(t *testing.T) {
	j := &journal{}
	srv := &ctxHost{fakeHost: &fakeHost{name: "server", runs: true, j: j, hold: true}}
	ws := &fakeHost{name: "workstation", j: j}
	keeper := &shortKeeper{fakeKeeper: fakeKeeper{j: j}, ttl: 300 * time.Millisecond}
	co := New(Config{Domain: "desktop", Server: srv, Workstation: ws, Lease: keeper, Disks: fakeDisks{j}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { defer close(ran); co.Run(ctx) }()
	var aborted event.PhaseChanged
	for ev := range co.Events() {
		if p, ok := ev.(event.PhaseChanged); ok && p.Phase == event.Aborted {
			aborted = p
			break
		}
	}
	if aborted.Err == nil || !strings.Contains(aborted.Err.Error(), "expired") {
		t.Errorf("aborted with %v, want the lease's expiry as why", aborted.Err)
	}
	srv.mu.Lock()
	mctx := srv.ctx
	srv.mu.Unlock()
	if mctx == nil || mctx.Err() == nil {
		t.Error("the migration here did not run under a context the lost lease cancelled")
	}
	j.waitFor(t, "undo server→workstation")
	if err := co.Quit(); err != nil {
		t.Fatal(err)
	}
	<-ran
	if slices.ContainsFunc(j.entries(), func(e string) bool { return strings.HasPrefix(e, "release") }) {
		t.Errorf("an expired lease was released: %q", j.entries())
	}
	j.before(t, "acquire", "migrate server→workstation", "undo server→workstation")
}
