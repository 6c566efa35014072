package libvirt_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/switchover"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

// theLab is made once by TestMain: a lab takes ~20s to come up under TCG.
var theLab *lab.Lab

func TestMain(m *testing.M) {
	labtest.Main(m, "libvirt", lab.Config{}, func(l *lab.Lab) int {
		theLab = l
		return m.Run()
	})
}

func conns(t *testing.T) (server, workstation *libvirt.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, w, err := theLab.Conns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); w.Close() })
	return s, w
}

// restartGuest gives a test the guest it needs, on the server, and puts the
// default one back afterwards so every test starts from the same place.
func restartGuest(t *testing.T, g lab.GuestConfig) {
	t.Helper()
	ctx := context.Background()
	if err := theLab.RestartGuest(ctx, g, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := theLab.RestartGuest(ctx, lab.DefaultGuest, nil); err != nil {
			t.Errorf("put the default guest back: %v", err)
		}
		if _, err := theLab.Shape(ctx, lab.DefaultLink); err != nil {
			t.Errorf("put the default link back: %v", err)
		}
	})
}

// migrate runs one migration to the other host and returns its result and
// the reports it made.
func migrate(t *testing.T, ctx context.Context, from, to *libvirt.Conn, toHost string, o libvirt.Options) (libvirt.Result, []libvirt.Progress, error) {
	t.Helper()
	o.MigrateURI = theLab.MigrateURI(toHost)
	m, err := libvirt.Start(ctx, from, to, lab.GuestName, o)
	if err != nil {
		t.Fatal(err)
	}
	var reports []libvirt.Progress
	res, err := libvirt.Run(m, func(p libvirt.Progress) { reports = append(reports, p) })
	return res, reports, err
}

// assertGuestLives checks the guest runs on host, that its ticks go on from
// where they were, and that its memory is intact.
func assertGuestLives(t *testing.T, host string, afterTick int) {
	t.Helper()
	if err := guestLives(t, host, afterTick); err != nil {
		t.Fatal(err)
	}
}

// guestLives is assertGuestLives that returns, rather than fails on, a
// guest that stopped ticking or whose kernel died, for a caller that says
// more of where. Lost memory fails at once.
func guestLives(t *testing.T, host string, afterTick int) error {
	t.Helper()
	ctx := context.Background()
	if got, err := theLab.GuestHost(ctx); err != nil || got != host {
		t.Fatalf("guest runs on %q (%v), want %q", got, err, host)
	}
	if err := theLab.WaitTick(ctx, afterTick+3, 60*time.Second); err != nil {
		return err
	}
	st, err := theLab.GuestSerial()
	if err != nil {
		t.Fatal(err)
	}
	if st.Integrity != "ok" {
		t.Fatalf("guest integrity %q after migration, want ok (serial log %s)", st.Integrity, theLab.SerialLog)
	}
	return nil
}

func lastTick(t *testing.T) int {
	t.Helper()
	st, err := theLab.GuestSerial()
	if err != nil {
		t.Fatal(err)
	}
	return st.Tick
}

// TestMigrateThereAndBack moves the dirtying guest to the workstation and
// back, its memory checked after each leg.
func TestMigrateThereAndBack(t *testing.T) {
	if stopped := migrateThereAndBack(t); stopped != nil {
		t.Fatalf("the guest stopped after a finished migration: %v (serial log %s)", stopped, theLab.SerialLog)
	}
}

// migrateThereAndBack fails t on anything but a guest that stopped after a
// finished migration, which it returns for the caller to fail on.
func migrateThereAndBack(t *testing.T) error {
	srv, ws := conns(t)
	ctx := context.Background()
	// There with the default switch (post-copy once the rest fits, unless
	// QEMU finishes first within its 10 ms), back with the pausing one.
	pause := switchover.DefaultConfig()
	pause.SwitchByPostCopy = false
	for _, leg := range []struct {
		from, to *libvirt.Conn
		toHost   string
		opts     libvirt.Options
		modes    []string
	}{{srv, ws, "workstation", libvirt.Options{}, []string{"postcopy", "precopy"}}, {ws, srv, "server", libvirt.Options{Policy: pause}, []string{"precopy"}}} {
		tick := lastTick(t)
		res, reports, err := migrate(t, ctx, leg.from, leg.to, leg.toHost, leg.opts)
		if err != nil {
			t.Fatalf("migrate to the %s: %v", leg.toHost, err)
		}
		if !slices.Contains(leg.modes, res.Mode) || res.Transferred == 0 || res.Total <= 0 || res.Downtime <= 0 {
			t.Errorf("migrate to the %s: result %+v, want a finish by %v with its figures", leg.toHost, res, leg.modes)
		}
		if len(reports) == 0 {
			t.Errorf("migrate to the %s: no progress reports", leg.toHost)
		}
		for _, p := range reports {
			if p.Sample.Total == 0 || p.Sample.Phase == "" {
				t.Errorf("report without figures: %+v", p)
				break
			}
		}
		t.Logf("to the %s: %s, downtime %v, total %v, %d bytes, %d passes", leg.toHost, res.Mode, res.Downtime, res.Total, res.Transferred, res.Iterations)
		if err := guestLives(t, leg.toHost, tick); err != nil {
			return err
		}
	}
	return nil
}

func TestGuestDirtyingFasterThanTheLinkSwitchesByPostCopy(t *testing.T) {
	restartGuest(t, lab.GuestConfig{MemMB: 256, DirtyMBps: 40, WSSMB: 48})
	srv, ws := conns(t)
	tick := lastTick(t)
	o := libvirt.Options{Policy: switchover.DefaultConfig(), MaxSpeed: 8 << 20}
	o.Policy.PostCopyAfter = 3 * time.Second
	res, reports, err := migrate(t, context.Background(), srv, ws, "workstation", o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "postcopy" {
		t.Fatalf("mode %q, want postcopy", res.Mode)
	}
	explained := false
	for _, p := range reports {
		if p.Decision.Action == switchover.PostCopy && strings.Contains(p.Decision.Reason, "post-copy") {
			explained = true
		}
	}
	if !explained {
		t.Errorf("no report decided on post-copy and said why")
	}
	assertGuestLives(t, "workstation", tick)
}

// TestPostCopySurvivesABrokenLink cuts the link in the middle of a
// post-copy and resets its connections: both QEMUs pause (postcopy-paused),
// the guest running on the workstation waits for the pages the server
// holds, and the engine resumes the job once the link is back.
//
// Through the relay the broken connections are the relay's own: the
// workstation opens another session, and the resumed stream rides it.
func TestPostCopySurvivesABrokenLink(t *testing.T) {
	t.Run("direct", func(t *testing.T) { postCopySurvivesABrokenLink(t, false) })
	t.Run("through the relay", func(t *testing.T) { postCopySurvivesABrokenLink(t, true) })
}

func postCopySurvivesABrokenLink(t *testing.T, relayed bool) {
	restartGuest(t, lab.GuestConfig{MemMB: 256, DirtyMBps: 40, WSSMB: 48})
	ctx := context.Background()
	// A slow link keeps the post-copy going long enough to break it.
	if _, err := theLab.Shape(ctx, lab.Link{Bandwidth: "50mbit"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { theLab.SetLink(ctx, true) })
	srv, ws := conns(t)
	tick := lastTick(t)
	o := libvirt.Options{Policy: switchover.DefaultConfig(), MigrateURI: theLab.MigrateURI("workstation")}
	o.Policy.PostCopyAfter = 3 * time.Second
	stats := &relay.Stats{}
	if relayed {
		c, err := theLab.StreamRelay(false, stats)
		if err != nil {
			t.Fatal(err)
		}
		o.Stream = c
	}
	m, err := libvirt.Start(ctx, srv, ws, lab.GuestName, o)
	if err != nil {
		t.Fatal(err)
	}
	var postcopySince time.Time
	broken, saidLost := false, false
	start := time.Now()
	for p := range m.Progress() {
		if strings.Contains(p.Decision.Reason, "link lost") && !saidLost {
			saidLost = true
			t.Logf("%v: %s", time.Since(start).Round(time.Second), p.Decision.Reason)
		}
		if p.Sample.Phase != switchover.PhasePostcopy || broken {
			continue
		}
		if postcopySince.IsZero() {
			postcopySince = time.Now()
		}
		if time.Since(postcopySince) < 2*time.Second {
			continue
		}
		broken = true
		if err := theLab.SetLink(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := theLab.ResetConnections(ctx); err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(6 * time.Second)
			theLab.SetLink(ctx, true)
		}()
	}
	res, err := m.Wait()
	t.Logf("%v: ended: %+v, %v", time.Since(start).Round(time.Second), res, err)
	if !broken {
		t.Fatalf("the job ended (%+v, %v) before the post-copy ran for 2 s: nothing was broken", res, err)
	}
	if err != nil {
		t.Fatalf("after the link came back: %v", err)
	}
	if res.Mode != "postcopy" || !saidLost {
		t.Errorf("result %+v, a report said the link was lost: %v; want a post-copy finish, and the loss reported", res, saidLost)
	}
	if relayed && (stats.Raw.Load() < res.Transferred/2 || stats.Ratio() > 0.8) {
		t.Errorf("the relay carried %d stream bytes as %d of QEMU's %d: not the stream, or not compressed", stats.Raw.Load(), stats.Wire.Load(), res.Transferred)
	}
	assertGuestLives(t, "workstation", tick)
}

func TestAbortLeavesTheGuestRunningOnTheSource(t *testing.T) {
	srv, ws := conns(t)
	tick := lastTick(t)
	o := libvirt.Options{MaxSpeed: 1 << 20, MigrateURI: theLab.MigrateURI("workstation")}
	m, err := libvirt.Start(context.Background(), srv, ws, lab.GuestName, o)
	if err != nil {
		t.Fatal(err)
	}
	for p := range m.Progress() {
		if p.Sample.Transferred > 2<<20 {
			if err := m.Abort(); err != nil {
				t.Fatalf("abort: %v", err)
			}
			break
		}
	}
	_, err = m.Wait()
	if !errors.Is(err, libvirt.ErrAborted) {
		t.Fatalf("Wait after abort = %v, want ErrAborted", err)
	}
	assertGuestLives(t, "server", tick)
}

func TestCancelledContextAbortsLikeCtrlC(t *testing.T) {
	srv, ws := conns(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := libvirt.Options{MaxSpeed: 1 << 20, MigrateURI: theLab.MigrateURI("workstation")}
	m, err := libvirt.Start(ctx, srv, ws, lab.GuestName, o)
	if err != nil {
		t.Fatal(err)
	}
	<-m.Progress()
	cancel()
	if _, err := m.Wait(); !errors.Is(err, libvirt.ErrAborted) {
		t.Fatalf("Wait after cancel = %v, want ErrAborted", err)
	}
	assertGuestLives(t, "server", lastTick(t))
}

func TestMeasureDirtyRate(t *testing.T) {
	srv, _ := conns(t)
	d, err := srv.Lookup(lab.GuestName)
	if err != nil {
		t.Fatal(err)
	}
	rate, err := libvirt.MeasureDirtyRate(context.Background(), d, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The guest dirties 2 MB/s, but QEMU's page sampling under TCG can read
	// far lower (even 0), which is why the plan does not depend on it: only
	// that a measurement completes with a sane figure is promised.
	if rate < 0 || rate > 1e9 {
		t.Fatalf("measured dirty rate %.0f B/s, not a plausible figure", rate)
	}
	t.Logf("QEMU's estimate: %.1f MB/s (the guest dirties 2 MB/s)", rate/1e6)
}

func TestBadInputGetsClearErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, ws := conns(t)
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"typo in the driver", func() error { _, err := libvirt.Connect(ctx, "qemux:///system"); return err }, `driver "qemux" is not supported`},
		{"no daemon at the socket", func() error {
			_, err := libvirt.Connect(ctx, "qemu+unix:///session?socket=/nonexistent/libvirt-sock")
			return err
		}, "no libvirt daemon listens on /nonexistent/libvirt-sock"},
		{"unreachable host", func() error { _, err := libvirt.Connect(ctx, "qemu+tcp://127.0.0.1:1/system"); return err }, "reachable"},
		{"missing domain", func() error { _, err := srv.Lookup("no-such-vm"); return err }, `no such domain "no-such-vm"`},
		{"domain not on the source", func() error {
			_, err := libvirt.Start(ctx, ws, srv, lab.GuestName, libvirt.Options{})
			return err
		}, `no such domain "handoff-guest"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestTheRelayCompressesAMoveAndKeepsPostCopy moves the dirtying guest over
// a 20 Mbit/s link through handoff's relay (serve's end on the server, the
// workstation's here), there by a post-copy switch and back by a pause:
// both ends counted fewer bytes on the link than QEMU sent, and the
// workstation's end of the veth saw no more than the relay counted.
func TestTheRelayCompressesAMoveAndKeepsPostCopy(t *testing.T) {
	restartGuest(t, lab.DefaultGuest)
	ctx := context.Background()
	if _, err := theLab.Shape(ctx, lab.Link{Bandwidth: "20mbit"}); err != nil {
		t.Fatal(err)
	}
	srv, ws := conns(t)
	pause := switchover.DefaultConfig()
	pause.SwitchByPostCopy = false
	for _, leg := range []struct {
		from, to *libvirt.Conn
		toHost   string
		toServer bool
		policy   switchover.Config
	}{{srv, ws, "workstation", false, switchover.DefaultConfig()}, {ws, srv, "server", true, pause}} {
		stats := &relay.Stats{}
		carrier, err := theLab.StreamRelay(leg.toServer, stats)
		if err != nil {
			t.Fatal(err)
		}
		before, err := theLab.LinkCounts()
		if err != nil {
			t.Fatal(err)
		}
		tick := lastTick(t)
		m, err := libvirt.Start(ctx, leg.from, leg.to, lab.GuestName, libvirt.Options{Policy: leg.policy, Stream: carrier, MigrateURI: theLab.MigrateURI(leg.toHost)})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m.Plan().Reason, "relay") {
			t.Errorf("plan %q does not say the relay carries memory", m.Plan().Reason)
		}
		res, err := libvirt.Run(m, func(libvirt.Progress) {})
		if err != nil {
			t.Fatalf("migrate to the %s through the relay: %v", leg.toHost, err)
		}
		after, err := theLab.LinkCounts()
		if err != nil {
			t.Fatal(err)
		}
		link := uint64(after.Received + after.Sent - before.Received - before.Sent)
		mode, why := stats.Mode()
		t.Logf("to the %s: %s, downtime %v, total %v; QEMU sent %d bytes, the relay %d of %d stream bytes on the link (%v: %s), the veth %d", leg.toHost, res.Mode, res.Downtime, res.Total, res.Transferred, stats.Wire.Load(), stats.Raw.Load(), mode, why, link)
		if stats.Raw.Load() < res.Transferred/2 || stats.Ratio() > 0.8 {
			t.Errorf("to the %s: the relay carried %d stream bytes as %d of QEMU's %d: not the stream, or not compressed", leg.toHost, stats.Raw.Load(), stats.Wire.Load(), res.Transferred)
		}
		if float64(link) > 1.1*float64(stats.Wire.Load())+4e6 {
			t.Errorf("to the %s: the link carried %d bytes, the relay only %d: the stream went around it", leg.toHost, link, stats.Wire.Load())
		}
		if leg.toHost == "workstation" && res.Mode != "postcopy" {
			t.Errorf("there: switched by %s, want post-copy through the relay", res.Mode)
		}
		assertGuestLives(t, leg.toHost, tick)
	}
}
