package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/handoff-dev/handoff/switchover"
)

// Options tune one migration.
type Options struct {
	// Policy decides when to switch; see switchover.Config.
	Policy switchover.Config
	// PeerURI is the destination daemon's URI as the source daemon reaches
	// it (peer-to-peer). Empty: the destination connection's own URI, or,
	// when one side is a qemu+ssh host and MigrateURI is empty too, a
	// tunnel inside the workstation's SSH connection.
	PeerURI string
	// MigrateURI is where the source QEMU sends memory, such as
	// tcp://192.0.2.2 or tcp://127.0.0.1:49152 through a tunnel. Empty:
	// libvirt picks from the destination's hostname.
	MigrateURI string
	// ListenAddress is where the destination QEMU listens; empty: libvirt's
	// default.
	ListenAddress string
	// MaxSpeed caps the memory stream in bytes/s, leaving room on the link
	// for the view and the keyboard. Zero: no cap.
	MaxSpeed uint64
	// LinkRate is the link's bytes/s, if known, for choosing the plan.
	// Zero: unknown.
	LinkRate float64
	// Plan fixes how the job is set up; nil: switchover.ChoosePlan.
	Plan *switchover.Plan
	// Compression lists extra QEMU compression methods libvirt 9.0 accepts
	// for plain migrations: "xbzrle" and "mt".
	Compression []string
	// XBZRLECache is the XBZRLE page cache in bytes; zero: QEMU's default.
	XBZRLECache uint64
	// Parallel opens this many connections (multifd); zero or one: off.
	Parallel int
	// NoPostCopy keeps post-copy off, as for hosts without userfaultfd.
	NoPostCopy bool
	// PollInterval is how often job statistics are read.
	PollInterval time.Duration
	// Disks copies the domain's disks with its memory; nil: it has none,
	// or SharedDisks.
	Disks *DiskCopy
	// SharedDisks says both hosts see the domain's disk files at the same
	// paths (NFS, say), so nothing is copied.
	SharedDisks bool
	// Stream, if set, carries the memory stream instead of a direct
	// connection or the SSH tunnel: handoff's compressing relay. When it
	// cannot (an older server), the stream goes as it would without it,
	// and Plan().Reason says why.
	Stream StreamCarrier
	// DiskStream, if set, carries the disks' NBD mirror the same way, when
	// Disks names no URI of its own: what the guest writes during the move
	// then crosses compressed.
	DiskStream StreamCarrier
}

// BelowOverlay is the file under a mirrored overlay on each host.
type BelowOverlay struct{ Source, Destination string }

// A MirrorCarrier carries the disks' mirror knowing what lies below the
// overlays it writes, so it can send each write as its changes to that.
type MirrorCarrier interface {
	CarryMirror(ctx context.Context, below map[string]BelowOverlay) (port int, stop func() error, err error)
}

// StreamCarrier opens ways for a migration's memory stream between the
// two hosts.
type StreamCarrier interface {
	// Carry opens one: the source QEMU sends to 127.0.0.1:port on its
	// host, and every connection made there (a post-copy resume makes
	// another) reaches 127.0.0.1:port on the destination host, where its
	// QEMU listens. It lives until stop, whatever becomes of ctx; stop
	// returns the first error that broke a stream on the way, if one did.
	Carry(ctx context.Context) (port int, stop func() error, err error)
}

// DiskCopy says how a migration carries disks: QEMU mirrors them over NBD
// to files the destination already has, while memory is copied.
type DiskCopy struct {
	// Targets names every disk to copy ("vda"); never empty, as libvirt
	// reads an empty list as "every writable disk".
	Targets []string
	// TopOnly copies only each disk's top layer: the destination holds the
	// same layers below it already (VIR_MIGRATE_NON_SHARED_INC). Otherwise
	// whole disks are copied into empty files of the same size.
	TopOnly bool
	// DestinationXML is the domain as it will run on the destination, with
	// that host's paths for its disks.
	DestinationXML string
	// PersistentXML, if set, becomes the domain's definition on the
	// destination, replacing the one it had there.
	PersistentXML string
	// Below names, by NBD export (Disk.NBDExport), the file under each
	// mirrored overlay on each host: a chain both hold, which a
	// MirrorCarrier sends the mirror's writes against.
	Below map[string]BelowOverlay
	// URI is where the source QEMU reaches the destination's NBD server,
	// as tcp://HOST or tcp://HOST:PORT; empty: the memory stream's host, or
	// a tunnel inside SSH.
	URI string
}

// Progress is one report from a running migration.
type Progress struct {
	Sample   switchover.Sample
	Decision switchover.Decision
}

// Result describes a finished migration.
type Result struct {
	Mode     string // "precopy" or "postcopy": how the VM switched hosts
	Downtime time.Duration
	// DowntimeKnown: a side reported Downtime. After a post-copy into the
	// server neither may: the source forgets the job with its transient
	// domain, and the destination never had the figure.
	DowntimeKnown bool
	Total         time.Duration
	Transferred   uint64 // bytes on the wire
	MemoryTotal   uint64
	Iterations    uint64
}

// ErrAborted is returned (wrapped) when a migration was stopped on request
// or by a cancelled context before the switch.
var ErrAborted = errors.New("migration aborted")

// Migration is one running job; Start makes it.
type Migration struct {
	src, dst *Conn
	dom      *Domain
	opts     Options

	tunnel     *tunnel          // nil unless one side is reached over SSH
	stopStream func() error     // ends the relay's ways, Options.Stream's and DiskStream's (once), and says what broke one; nil without any
	phase      switchover.Phase // where drive starts: setup, or post-copy for a job taken over there

	progress chan Progress
	requests chan request
	done     chan struct{}
	result   Result
	err      error

	// running is the running job's last statistics from the source that
	// reported a downtime after the switch, for drive alone: after a
	// post-copy a hand back's destination keeps no downtime, and its
	// source no domain.
	running jobStats
}

type request struct {
	kind  string // "postcopy" or "abort"
	reply chan error
}

// Start begins live-migrating the domain name from src to dst. The job runs
// until it completes, fails, is aborted, or ctx ends (which aborts it unless
// post-copy has begun, after which it finishes).
func Start(ctx context.Context, src, dst *Conn, name string, opts Options) (*Migration, error) {
	opts = withDefaults(opts)
	dom, err := src.Lookup(name)
	if err != nil {
		return nil, err
	}
	st, err := dom.State()
	if err != nil {
		return nil, err
	}
	if st != StateRunning {
		return nil, fmt.Errorf("domain %s is %s on %s, not running: only a running VM can be live-migrated (start it with: virsh -c '%s' start %s)", name, st, src.uri, src.uri, name)
	}
	if u, err := underWay(dom); err != nil {
		return nil, err
	} else if u != nil {
		return nil, &UnderWayError{UnderWay: *u, Dest: dst.uri}
	}
	if there, err := dst.Lookup(name); err == nil {
		if st, _ := there.State(); st == StateRunning || st == StatePaused {
			return nil, fmt.Errorf("domain %s already runs on %s: nothing to migrate", name, dst.uri)
		}
	}
	if opts.Plan == nil {
		p := switchover.ChoosePlan(opts.LinkRate, !opts.NoPostCopy)
		opts.Plan = &p
	}
	if opts.Plan.Compress && !slices.Contains(opts.Compression, "mt") {
		opts.Compression = append(opts.Compression, "mt")
	}
	if !opts.Plan.PostCopy {
		// Without post-copy the policy can only report; QEMU's
		// auto-converge then throttles the guest until the copy catches up.
		opts.NoPostCopy = true
		opts.Policy.PostCopyAfter = 0
	}
	// A post-copy switch wants the disks' mirror done with first; until
	// that is tried, a move with disks switches by pausing.
	opts.Policy.SwitchByPostCopy = opts.Policy.SwitchByPostCopy && !opts.NoPostCopy && opts.Disks == nil
	if !opts.SharedDisks {
		if err := checkDisks(dom, opts.Disks); err != nil {
			return nil, err
		}
	}
	var tun *tunnel
	if opts.PeerURI == "" && opts.MigrateURI == "" {
		if tun, err = openTunnel(src, dst, opts.Disks != nil); err != nil {
			return nil, fmt.Errorf("tunnel the migration through SSH: %w", err)
		}
		if tun != nil {
			opts.PeerURI, opts.MigrateURI, opts.ListenAddress = tun.peerURI, tun.migrateURI, tun.listenAddr
			if opts.Disks != nil && opts.Disks.URI == "" {
				d := *opts.Disks
				d.URI = tun.disksURI
				opts.Disks = &d
			}
		}
	}
	var stopDisks func() error
	if d := opts.Disks; d != nil && d.URI == "" && opts.DiskStream != nil {
		plan := *opts.Plan
		carry := opts.DiskStream.Carry
		if m, ok := opts.DiskStream.(MirrorCarrier); ok && len(d.Below) > 0 {
			carry = func(ctx context.Context) (int, func() error, error) { return m.CarryMirror(ctx, d.Below) }
		}
		if port, stop, err := carry(ctx); err != nil {
			plan.Reason += fmt.Sprintf("; the disks' mirror goes uncompressed: %v", err)
		} else {
			c := *d
			c.URI, stopDisks = fmt.Sprintf("tcp://127.0.0.1:%d", port), sync.OnceValue(stop)
			opts.Disks = &c
			plan.Reason += "; the disks' mirror goes through handoff's zstd relay"
		}
		opts.Plan = &plan
	}
	if d := opts.Disks; d != nil && d.URI == "" {
		// NBD goes where memory goes; the destination picks the port.
		if u, err := url.Parse(opts.MigrateURI); err == nil && u.Scheme == "tcp" && u.Hostname() != "" {
			c := *d
			c.URI = "tcp://" + u.Hostname()
			opts.Disks = &c
		}
	}
	var stopStream func() error
	if opts.Stream != nil {
		port, stop, err := opts.Stream.Carry(ctx)
		if err != nil {
			plan := *opts.Plan
			plan.Reason += fmt.Sprintf("; memory goes uncompressed: %v", err)
			opts.Plan = &plan
		} else {
			opts.MigrateURI, opts.ListenAddress, stopStream = fmt.Sprintf("tcp://127.0.0.1:%d", port), "127.0.0.1", sync.OnceValue(stop)
			plan := *opts.Plan
			plan.Reason += "; memory goes through handoff's zstd relay"
			opts.Plan = &plan
		}
	}
	m := newMigration(src, dst, dom, opts, tun)
	m.stopStream = bothStreams(stopStream, stopDisks)
	go m.drive(ctx, m.perform)
	return m, nil
}

// bothStreams stops the relay's ways for memory and disks, either nil,
// and says what broke one; nil when neither was opened.
func bothStreams(memory, disks func() error) func() error {
	switch {
	case disks == nil:
		return memory
	case memory == nil:
		memory = func() error { return nil }
	}
	return sync.OnceValue(func() error {
		merr, derr := memory(), disks()
		if derr != nil {
			derr = fmt.Errorf("the disks' mirror: %w", derr)
		}
		return errors.Join(merr, derr)
	})
}

func withDefaults(opts Options) Options {
	if opts.PollInterval <= 0 {
		opts.PollInterval = 200 * time.Millisecond
	}
	if opts.Policy == (switchover.Config{}) {
		opts.Policy = switchover.DefaultConfig()
	}
	return opts
}

func newMigration(src, dst *Conn, dom *Domain, opts Options, tun *tunnel) *Migration {
	return &Migration{
		src: src, dst: dst, dom: dom, opts: opts, tunnel: tun,
		phase:    switchover.PhaseSetup,
		progress: make(chan Progress, 1),
		requests: make(chan request),
		done:     make(chan struct{}),
	}
}

// perform runs the job in the source's libvirtd, returning when it ends.
func (m *Migration) perform() error { return m.performWith(0) }

// performWith is perform with more flags, as a resume's.
func (m *Migration) performWith(extra golibvirt.DomainMigrateFlags) error {
	peer := m.opts.PeerURI
	if peer == "" {
		peer = m.dst.uri
	}
	_, err := m.src.lv.DomainMigratePerform3Params(m.dom.dom, golibvirt.OptString{peer}, m.params(), nil, m.flags()|extra)
	return err
}

// Progress delivers reports while the job runs, newest first: a slow reader
// misses old reports rather than stalling the job. Closed when the job ends.
func (m *Migration) Progress() <-chan Progress { return m.progress }

// PostCopy switches the VM to the destination now and pages the rest of its
// memory on demand.
func (m *Migration) PostCopy() error { return m.ask("postcopy") }

// Abort stops the job before the switch; the VM keeps running on the source.
func (m *Migration) Abort() error { return m.ask("abort") }

func (m *Migration) ask(kind string) error {
	r := request{kind: kind, reply: make(chan error, 1)}
	select {
	case m.requests <- r:
		return <-r.reply
	case <-m.done:
		return fmt.Errorf("%s: the migration has already ended", kind)
	}
}

// Plan is how the job was set up, and why.
func (m *Migration) Plan() switchover.Plan { return *m.opts.Plan }

// Done is closed when the job has ended.
func (m *Migration) Done() <-chan struct{} { return m.done }

// Wait blocks until the job ends and returns how it went.
func (m *Migration) Wait() (Result, error) {
	<-m.done
	return m.result, m.err
}

func (m *Migration) flags() golibvirt.DomainMigrateFlags {
	f := golibvirt.MigrateLive | golibvirt.MigratePeer2peer | golibvirt.MigrateAbortOnError
	if !m.opts.NoPostCopy {
		f |= golibvirt.MigratePostcopy
	}
	if len(m.opts.Compression) > 0 {
		f |= golibvirt.MigrateCompressed
	}
	if m.opts.NoPostCopy {
		f |= golibvirt.MigrateAutoConverge
	}
	if m.opts.Parallel > 1 {
		f |= golibvirt.MigrateParallel
	}
	if d := m.opts.Disks; d != nil {
		if d.PersistentXML != "" {
			f |= golibvirt.MigratePersistDest
		}
		if d.TopOnly {
			f |= golibvirt.MigrateNonSharedInc
		} else {
			f |= golibvirt.MigrateNonSharedDisk
		}
	}
	return f
}

func (m *Migration) params() []golibvirt.TypedParam {
	var ps []golibvirt.TypedParam
	str := func(k, v string) {
		ps = append(ps, golibvirt.TypedParam{Field: k, Value: *golibvirt.NewTypedParamValueString(v)})
	}
	ulong := func(k string, v uint64) {
		ps = append(ps, golibvirt.TypedParam{Field: k, Value: golibvirt.TypedParamValue{D: 4, I: v}})
	}
	if m.opts.MigrateURI != "" {
		str("migrate_uri", m.opts.MigrateURI)
	}
	if m.opts.ListenAddress != "" {
		str("listen_address", m.opts.ListenAddress)
	}
	if m.opts.MaxSpeed > 0 {
		// libvirt takes MiB/s; round up so a small cap is not "unlimited".
		ulong("bandwidth", (m.opts.MaxSpeed+(1<<20)-1)>>20)
	}
	for _, c := range m.opts.Compression {
		str("compression", c)
	}
	if slices.Contains(m.opts.Compression, "mt") {
		// Level 1: on a home link the wire, not zlib, is the bottleneck,
		// and the guest shares the CPU with the compressing threads.
		ps = append(ps, golibvirt.TypedParam{Field: "compression.mt.level", Value: *golibvirt.NewTypedParamValueInt(1)})
	}
	if m.opts.XBZRLECache > 0 {
		ulong("compression.xbzrle.cache", m.opts.XBZRLECache)
	}
	if m.opts.Parallel > 1 {
		ps = append(ps, golibvirt.TypedParam{Field: "parallel.connections", Value: *golibvirt.NewTypedParamValueInt(int32(m.opts.Parallel))})
	}
	if d := m.opts.Disks; d != nil {
		for _, t := range d.Targets {
			str(golibvirt.MigrateParamMigrateDisks, t)
		}
		if d.DestinationXML != "" {
			str(golibvirt.MigrateParamDestXML, d.DestinationXML)
		}
		if d.URI != "" {
			str(golibvirt.MigrateParamDisksURI, d.URI)
		}
		if d.PersistentXML != "" {
			str(golibvirt.MigrateParamPersistXML, d.PersistentXML)
		}
	}
	return ps
}

// drive runs the job's policy until perform, which runs the job or waits
// for it, returns.
func (m *Migration) drive(ctx context.Context, perform func() error) {
	defer close(m.done)
	defer close(m.progress)
	if m.tunnel != nil {
		defer m.tunnel.Close()
	}
	if m.stopStream != nil {
		defer m.stopStream()
	}

	performed := make(chan error, 1)
	go func() { performed <- perform() }()

	var (
		history   []switchover.Sample
		phase     = m.phase
		held      bool // QEMU's own switch is held back
		switching bool
		aborting  bool
		cancelled = ctx.Done()
		last      Progress
	)
	tick := time.NewTicker(m.opts.PollInterval)
	defer tick.Stop()

	startPostCopy := func(reason string) error {
		if m.opts.NoPostCopy {
			return fmt.Errorf("post-copy is not available for this migration (%s)", m.opts.Plan.Reason)
		}
		if phase == switchover.PhasePostcopy {
			return nil
		}
		if err := m.src.lv.DomainMigrateStartPostCopy(m.dom.dom, 0); err != nil {
			return fmt.Errorf("switch to post-copy (%s): %w", reason, err)
		}
		phase = switchover.PhasePostcopy
		return nil
	}
	abort := func() error {
		if phase == switchover.PhasePostcopy {
			return errors.New("the VM already runs on the destination (post-copy): the migration can only finish now")
		}
		aborting = true
		if err := m.src.lv.DomainAbortJob(m.dom.dom); err != nil {
			return fmt.Errorf("abort migration of %s: %w", m.dom.Name(), err)
		}
		return nil
	}

	var (
		linkLost error // why the post-copy stream broke, while resuming
		resumes  int
	)
	for {
		select {
		case err := <-performed:
			if err != nil && phase == switchover.PhasePostcopy && !errors.Is(err, errStoppedResuming) {
				switch m.afterBrokenPostCopy() {
				case brokenMoved:
					err = nil // the job finished by itself after all
				case brokenWaiting:
					// The guest runs on the destination and waits for the
					// pages still here: resume once the link is back.
					if linkLost == nil {
						linkLost = err
					}
					resumes++
					delay := resumeEvery
					if resumes == 1 {
						delay = 0
					}
					go func() { performed <- m.resumePostCopy(ctx, delay) }()
					last.Decision.Reason = m.linkLostReason(linkLost, resumes, err)
					m.send(last)
					continue
				}
			}
			m.finish(err, phase, aborting, last)
			return
		case <-cancelled:
			cancelled = nil // once
			if err := abort(); err != nil && phase != switchover.PhasePostcopy {
				m.err = err
			}
		case r := <-m.requests:
			switch r.kind {
			case "postcopy":
				r.reply <- startPostCopy("asked by the user")
			case "abort":
				r.reply <- abort()
			}
		case <-tick.C:
			typ, params, err := m.src.lv.DomainGetJobStats(m.dom.dom, 0)
			if err != nil || golibvirt.DomainJobType(typ) == golibvirt.DomainJobNone {
				continue
			}
			st := parseJobStats(params)
			if st.hasDowntime && phase == switchover.PhasePostcopy {
				m.running = st // before the switch it is QEMU's expected downtime
			}
			switch {
			case st.total == 0 && st.diskTotal == 0:
				continue // the job exists but QEMU has not reported yet
			case st.total == 0 && phase == switchover.PhaseSetup:
				// libvirt mirrors the disks before it starts on memory.
				s := st.sample(switchover.PhaseDisks)
				history = appendBounded(history, s, 2*time.Minute)
				last = Progress{Sample: s, Decision: switchover.Decide(m.opts.Policy, history)}
				m.send(last)
				continue
			}
			if phase == switchover.PhaseSetup && (st.transferred > 0 || st.iteration > 0) {
				phase = switchover.PhasePrecopy
				history = history[:0] // the disk phase measured no memory bandwidth
			}
			if !held && phase == switchover.PhasePrecopy {
				// QEMU may switch by itself only within heldDowntime; the
				// policy raises the limit when it decides a longer pause is
				// worth it, or switches by post-copy. (A limit of 1 ms once
				// seemed to crash guests under TCG: that was QEMU 7.2 losing
				// writes, more passes losing more; README, "What we learned".)
				// Best effort: if QEMU refuses, its default limit (300 ms)
				// still bounds the pause.
				_ = m.src.lv.DomainMigrateSetMaxDowntime(m.dom.dom, uint64(m.heldDowntime()/time.Millisecond), 0)
				held = true
			}
			s := st.sample(phase)
			history = appendBounded(history, s, 2*time.Minute)
			d := switchover.Decide(m.opts.Policy, history)
			if !aborting {
				switch d.Action {
				case switchover.Switch:
					if !switching {
						limit := max(m.opts.Policy.DowntimeTarget, d.PredictedDowntime)
						if err := m.src.lv.DomainMigrateSetMaxDowntime(m.dom.dom, uint64(limit/time.Millisecond), 0); err == nil {
							switching = true
						}
					}
				case switchover.PostCopy:
					if !m.opts.NoPostCopy && phase == switchover.PhasePrecopy {
						if err := startPostCopy(d.Reason); err != nil {
							d.Reason += "; " + err.Error()
							if m.opts.Policy.SwitchByPostCopy {
								// Switch by pausing from now on (a job taken
								// over may lack post-copy).
								m.opts.Policy.SwitchByPostCopy = false
								_ = m.src.lv.DomainMigrateSetMaxDowntime(m.dom.dom, uint64(m.heldDowntime()/time.Millisecond), 0)
							}
						}
					}
				}
			}
			if linkLost != nil {
				d.Reason = m.linkLostReason(linkLost, resumes, nil)
			}
			last = Progress{Sample: s, Decision: d}
			m.send(last)
		}
	}
}

// resumeEvery is how often a broken post-copy is tried again.
const resumeEvery = 2 * time.Second

// errStoppedResuming ends the retries of a broken post-copy when the
// caller's context ends.
var errStoppedResuming = errors.New("stopped resuming the broken post-copy")

type brokenState int

const (
	brokenWaiting brokenState = iota // both hosts hold part of the guest
	brokenMoved                      // the guest runs on the destination alone
	brokenGone                       // neither: nothing to resume
)

// afterBrokenPostCopy tells what a post-copy job that returned an error
// left behind.
func (m *Migration) afterBrokenPostCopy() brokenState {
	st, err := m.dom.State()
	switch {
	case err != nil:
		return brokenWaiting // the source is out of reach: try again
	case st == StatePostcopyFailed || st == StatePostcopy || st == StatePaused:
		return brokenWaiting
	case st == StateShutoff:
		if there, err := m.dst.Lookup(m.dom.Name()); err == nil {
			if st, _ := there.State(); st == StateRunning {
				return brokenMoved
			}
		}
	}
	return brokenGone
}

// resumePostCopy waits delay, then asks the source to resume the broken
// post-copy (VIR_MIGRATE_POSTCOPY_RESUME, libvirt 8.5 and later): a new
// stream to the destination, returning like the first job once the rest
// of memory is across, or with an error while the link is still gone.
func (m *Migration) resumePostCopy(ctx context.Context, delay time.Duration) error {
	select {
	case <-ctx.Done():
		return errStoppedResuming
	case <-time.After(delay):
	}
	return m.performWith(golibvirt.MigratePostcopy | golibvirt.MigratePostcopyResume)
}

func (m *Migration) linkLostReason(lost error, resumes int, last error) string {
	r := fmt.Sprintf("link lost during post-copy (%v): %s runs on the destination, waiting for pages; resuming, try %d", lost, m.dom.Name(), resumes)
	if last != nil && last != lost {
		r += fmt.Sprintf(" (the last: %v)", last)
	}
	return r
}

// heldDowntime is the limit QEMU may switch by itself within. When the
// policy switches by post-copy, QEMU's own stop-and-copy is kept to the
// least it takes: QEMU weighs what is left against the bandwidth it
// believes, and through the relay, whose buffers take bursts, it once
// believed 800 KB fit 10 ms at 20 Mbit/s and paused the guest 597 ms,
// where the policy's post-copy switch pauses it 3-6 ms.
func (m *Migration) heldDowntime() time.Duration {
	if m.opts.Policy.SwitchByPostCopy {
		return min(m.opts.Policy.DowntimeTarget, postCopyHeldDowntime)
	}
	return m.opts.Policy.DowntimeTarget
}

// postCopyHeldDowntime is QEMU's own limit while the policy switches by
// post-copy: libvirt's least.
const postCopyHeldDowntime = time.Millisecond

// send delivers p, replacing an unread older report.
func (m *Migration) send(p Progress) {
	select {
	case m.progress <- p:
		return
	default:
	}
	select {
	case <-m.progress:
	default:
	}
	select {
	case m.progress <- p:
	default:
	}
}

func appendBounded(h []switchover.Sample, s switchover.Sample, keep time.Duration) []switchover.Sample {
	h = append(h, s)
	i := 0
	for i < len(h)-1 && s.Elapsed-h[i].Elapsed > keep {
		i++
	}
	return h[i:]
}

// finish records how the job ended, and checks that an unfinished job left
// the VM running on the source, resuming it if libvirt left it paused.
func (m *Migration) finish(performErr error, phase switchover.Phase, aborting bool, last Progress) {
	if performErr == nil {
		m.result = m.completedStats(phase, last)
		final := last
		final.Sample.Phase = switchover.PhaseCompleted
		final.Sample.Remaining = 0
		m.send(final)
		return
	}
	if errors.Is(performErr, errStoppedResuming) {
		m.err = fmt.Errorf("the link broke during post-copy and was not back when resuming stopped: %s runs on %s, waiting for the memory %s still holds; keep both hosts up, and once the link is back run 'handoff migrate --from %s --to %s %s', which resumes it", m.dom.Name(), m.dst.uri, m.src.uri, m.src.uri, m.dst.uri, m.dom.Name())
		return
	}
	if phase == switchover.PhasePostcopy {
		m.err = fmt.Errorf("post-copy migration of %s failed after the switch: %w; the VM may be paused on %s: check with virsh -c '%s' domjobinfo %s, and resume with 'handoff migrate --from %s --to %s %s'", m.dom.Name(), performErr, m.dst.uri, m.src.uri, m.dom.Name(), m.src.uri, m.dst.uri, m.dom.Name())
		return
	}
	state := m.ensureRunningOnSource()
	if aborting || strings.Contains(performErr.Error(), "cancel") {
		m.err = fmt.Errorf("%w: %s %s on %s", ErrAborted, m.dom.Name(), state, m.src.uri)
		return
	}
	if m.stopStream != nil {
		// QEMU saw only its connection close; the relay knows why.
		if err := m.stopStream(); err != nil {
			performErr = fmt.Errorf("%w (through handoff's relay: %v)", performErr, err)
		}
	}
	m.err = fmt.Errorf("migrate %s from %s to %s: %w; %s %s on %s", m.dom.Name(), m.src.uri, m.dst.uri, performErr, m.dom.Name(), state, m.src.uri)
}

func (m *Migration) ensureRunningOnSource() string {
	st, err := m.dom.State()
	if err != nil {
		return "is in an unknown state (" + err.Error() + ")"
	}
	if st == StatePaused {
		if err := m.dom.Resume(); err != nil {
			return "is paused and could not be resumed (" + err.Error() + ")"
		}
		return "was resumed and keeps running"
	}
	if st == StateRunning {
		return "keeps running"
	}
	return "is " + string(st)
}

// completedStats reads the finished job's figures; the destination keeps
// them for its domain, the source too when the domain stays defined there.
func (m *Migration) completedStats(phase switchover.Phase, last Progress) Result {
	r := Result{Mode: "precopy", Transferred: last.Sample.Transferred, MemoryTotal: last.Sample.Total, Total: last.Sample.Elapsed, Iterations: last.Sample.Iteration}
	if phase == switchover.PhasePostcopy {
		r.Mode = "postcopy"
	}
	var sides []jobStats
	for _, side := range []*Conn{m.src, m.dst} {
		d, err := side.Lookup(m.dom.Name())
		if err != nil {
			continue
		}
		typ, params, err := side.lv.DomainGetJobStats(d.dom, golibvirt.DomainJobStatsCompleted)
		if err != nil || golibvirt.DomainJobType(typ) != golibvirt.DomainJobCompleted {
			continue
		}
		if st := parseJobStats(params); st.elapsed > 0 {
			sides = append(sides, st)
		}
	}
	return completedResult(r, sides, m.running)
}

// completedResult fills r from the completed job's statistics of the
// sides that kept them, the source's first, and the downtime from
// whichever reported one, else from the running job's last statistics:
// after a post-copy a side may report none, which is not a pause of 0 ms.
func completedResult(r Result, sides []jobStats, running jobStats) Result {
	if len(sides) > 0 {
		st := sides[0]
		r.Total, r.Transferred, r.MemoryTotal = st.elapsed, st.transferred, st.total
		if st.iteration > 0 {
			r.Iterations = st.iteration
		}
	}
	for _, side := range append(sides, running) {
		if side.hasDowntime {
			r.Downtime, r.DowntimeKnown = side.downtime, true
			break
		}
	}
	return r
}

// MeasureDirtyRate asks QEMU how fast the guest dirties memory over period,
// before any migration starts, in bytes/s. It uses QEMU's page sampling,
// which under TCG can read far too low; its dirty-bitmap mode is not used,
// as it crashed QEMU under TCG. Treat the figure as a hint.
func MeasureDirtyRate(ctx context.Context, d *Domain, period time.Duration) (float64, error) {
	secs := int32(max(period/time.Second, 1))
	if err := d.conn.lv.DomainStartDirtyRateCalc(d.dom, secs, 0); err != nil {
		return 0, fmt.Errorf("measure dirty rate of %s: %w", d.Name(), err)
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("measure dirty rate of %s: %w", d.Name(), ctx.Err())
		case <-t.C:
		}
		recs, err := d.conn.lv.ConnectGetAllDomainStats([]golibvirt.Domain{d.dom}, uint32(golibvirt.DomainStatsDirtyrate), 0)
		if err != nil {
			return 0, fmt.Errorf("read dirty rate of %s: %w", d.Name(), err)
		}
		var status, mbps uint64
		for _, r := range recs {
			for _, p := range r.Params {
				v, _ := paramUint(p.Value)
				switch p.Field {
				case golibvirt.DomainStatsDirtyrateCalcStatus:
					status = v
				case golibvirt.DomainStatsDirtyrateMegabytesPerSecond:
					mbps = v
				}
			}
		}
		if status == 2 { // VIR_DOMAIN_DIRTYRATE_MEASURED
			return float64(mbps) * (1 << 20), nil
		}
	}
}
