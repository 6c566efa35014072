package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/switchover"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "[--from URI] [--to URI] [flags] [DOMAIN]", `
Live-migrate a running VM from one libvirt host to another. Memory streams while the
VM runs (pre-copy); the switchover policy switches execution once the dirty rate stays
below the link's bandwidth and the rest fits the downtime target, or falls back to
post-copy when it never converges. Ctrl-C before the switch aborts: the VM keeps
running on the source, on its disks as they were.

A migration whose client died (kill -9, a lost terminal) goes on inside the source's
libvirtd, and through the relay, whose workstation end runs in a process of its own
until the job's stream ends. Run migrate again and it takes a job still going over: its
progress, the policy's switch, and Ctrl-C to abort it, as if it had started it.

A VM whose disks are image files takes them along: they travel through the home
server's chunk store (log in with 'handoff lease login'; the lab's own serve in the
lab), sending only what the other host lacks, and the migration then mirrors only
what the guest wrote meanwhile. One of --from and --to must be this machine.

With no --from/--to, the built-in lab's hosts are used (see 'handoff lab up'), from
wherever its guest runs now to the other host; DOMAIN defaults to the lab's guest.`, stdout, stderr)
	from := fs.String("from", "", "source libvirt URI (qemu:///system, qemu+ssh://user@host/system, ...)")
	to := fs.String("to", "", "destination libvirt URI")
	jsonOut := fs.Bool("json", false, "print one JSON object per progress report, the result last")
	labDir := fs.String("lab", lab.DefaultDir, "the lab whose hosts stand in for a missing --from or --to")
	disksMode := fs.String("disks", "store", "how disks in files move: store (through the home server's chunk store: only what the other side lacks) or shared (both hosts see the same files)")
	images := imagesFlag(fs)
	opts := migrateFlags(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: migrate takes one DOMAIN, got %q", errUsage, fs.Args())
	}
	name := fs.Arg(0)
	if *disksMode != "store" && *disksMode != "shared" {
		return fmt.Errorf("%w: --disks %q: choose store or shared", errUsage, *disksMode)
	}
	o, err := opts.options()
	if err != nil {
		return err
	}
	if err := resolveEndpoints(ctx, *labDir, from, to, &name, &o); err != nil {
		return err
	}
	var stream, mirror *relay.Stats
	if *opts.relay {
		l, _ := lab.Load(*labDir)
		if *opts.migrateURI == "" { // a stream sent where the user said goes there
			stream = &relay.Stats{}
			o.Stream = streamRelay(l, *from, *to, stream)
		}
		mirror = &relay.Stats{}
		o.DiskStream = mirrorRelay(l, *from, *to, mirror)
	}
	src, dst, closeHosts, err := connectPair(ctx, *from, *to)
	if err != nil {
		return err
	}
	defer closeHosts()
	// A job whose client died goes on in the source's libvirtd: drive it
	// rather than start a second one over it.
	if u, err := libvirt.FindUnderWay(src, name); err != nil {
		return err
	} else if u != nil {
		return takeOver(ctx, src, dst, u, o, *to, *jsonOut, stdout)
	}

	move, closeDisks, err := moveDisks(ctx, *labDir, *disksMode, *images, src, dst, name, *jsonOut, stdout)
	if err != nil {
		return err
	}
	defer closeDisks()
	o.Disks = move.Copy
	if *disksMode == "shared" {
		o.SharedDisks = true
	}
	// Whatever stops the move before the switch, the disks go back as
	// they were: the source on its own chain, nothing left on the other.
	undo := func(err error) error {
		if uerr := move.Undo(context.WithoutCancel(ctx)); uerr != nil {
			return fmt.Errorf("%w; putting the disks back failed too: %v", err, uerr)
		}
		return err
	}
	m, err := libvirt.Start(ctx, src, dst, name, o)
	if err != nil {
		return undo(err)
	}
	if !*jsonOut {
		fmt.Fprintf(stdout, "migrating %s from %s to %s\nplan: %s\n", name, *from, *to, m.Plan().Reason)
	}
	res, err := libvirt.Run(m, progressReporter(*jsonOut, stdout))
	if err != nil {
		err = undo(err)
	}
	var tidy error
	if err == nil {
		tidy = move.Finish(context.WithoutCancel(ctx))
	}
	diskBytes := move.Moved.WireBytes
	if mirror != nil {
		diskBytes += int64(mirror.Wire.Load())
		if !*jsonOut && mirror.Raw.Load() > 0 {
			fmt.Fprintf(stdout, "disks: the mirror of what the guest wrote during the move: %s, %s on the link\n",
				units.Bytes(mirror.Raw.Load()), units.Bytes(mirror.Wire.Load()))
		}
	}
	if err := reportEnd(res, err, diskBytes, stream, *jsonOut, stdout, name, *to); err != nil {
		return err
	}
	if tidy != nil {
		return fmt.Errorf("%s now runs on %s, but tidying its disks failed: %w", name, *to, tidy)
	}
	return nil
}

// takeOver drives a migration another client started and left: its
// disks, if any, moved as that client arranged them.
func takeOver(ctx context.Context, src, dst *libvirt.Conn, u *libvirt.UnderWay, o libvirt.Options, to string, jsonOut bool, stdout io.Writer) error {
	m, err := libvirt.Attach(ctx, src, dst, u, o)
	if err != nil {
		return err
	}
	if !jsonOut {
		fmt.Fprintf(stdout, "a migration of %s from %s to %s is under way since %s (%v ago): taking it over; Ctrl-C aborts it\n",
			u.Domain, u.Source, to, u.Since.Format(time.TimeOnly), u.Elapsed.Round(time.Second))
	}
	res, err := libvirt.Run(m, progressReporter(jsonOut, stdout))
	return reportEnd(res, err, 0, nil, jsonOut, stdout, u.Domain, to)
}

func progressReporter(jsonOut bool, stdout io.Writer) func(libvirt.Progress) {
	if jsonOut {
		enc := json.NewEncoder(stdout)
		return func(p libvirt.Progress) { enc.Encode(p.Record()) }
	}
	return humanReporter(stdout)
}

// reportEnd prints how the job ended and returns its error; stream is the
// relay's count, nil or empty without one.
func reportEnd(res libvirt.Result, err error, diskBytes int64, stream *relay.Stats, jsonOut bool, stdout io.Writer, name, to string) error {
	var relayed string
	var relayBytes uint64
	if stream != nil && stream.Raw.Load() > 0 {
		relayBytes = stream.Wire.Load()
		relayed = fmt.Sprintf(" (%s on the link after the relay's zstd, %.0f%%)", units.Bytes(relayBytes), 100*stream.Ratio())
	}
	if jsonOut {
		rec := res.Record()
		rec.DiskBytes, rec.RelayBytes = diskBytes, relayBytes
		if err != nil {
			rec.Phase, rec.Error = "failed", err.Error()
			if errors.Is(err, libvirt.ErrAborted) {
				rec.Phase = "aborted"
			}
		}
		json.NewEncoder(stdout).Encode(rec)
	}
	if err != nil {
		return err
	}
	if !jsonOut {
		fmt.Fprintf(stdout, "\n%s now runs on %s: %s, downtime %s, total %v, %s sent%s\n",
			name, to, res.Mode, units.Downtime(res.Downtime, res.DowntimeKnown), res.Total.Round(time.Millisecond), units.Bytes(res.Transferred), relayed)
	}
	return nil
}

// migrateOptions are the flags 'migrate', 'grab' and 'bench' share.
type migrateOptions struct {
	downtime      *time.Duration
	postcopyAfter *time.Duration
	noPostcopy    *bool
	switchBy      *string
	maxSpeed      *string
	plan          *string
	link          *string
	migrateURI    *string
	peerURI       *string
	relay         *bool
}

func migrateFlags(fs interface {
	Duration(string, time.Duration, string) *time.Duration
	Bool(string, bool, string) *bool
	String(string, string, string) *string
}) *migrateOptions {
	def := switchover.DefaultConfig()
	return &migrateOptions{
		downtime:      fs.Duration("downtime", def.DowntimeTarget, "longest pause accepted when execution switches hosts"),
		postcopyAfter: fs.Duration("postcopy-after", def.PostCopyAfter, "switch by post-copy once a first pass over memory, or a migration that does not converge after it, has run this long (0: never on its own)"),
		noPostcopy:    fs.Bool("no-postcopy", false, "never use post-copy (for hosts without userfaultfd)"),
		switchBy:      fs.String("switch", "postcopy", "how execution switches once the rest fits the downtime target: postcopy (the VM pauses for milliseconds, the rest is paged after; memory-only moves) or pause (the VM pauses while the rest is copied)"),
		maxSpeed:      fs.String("max-speed", "", "cap the memory stream, as 15mbit or 100mbit, leaving the rest of the link free"),
		plan:          fs.String("plan", "auto", "auto: measure the guest's dirty rate and choose; compress: compressed pre-copy (no post-copy); postcopy: plain pre-copy with post-copy as fallback"),
		link:          fs.String("link", "", "the link's rate, as 20mbit, for --plan auto (the lab knows its own)"),
		migrateURI:    fs.String("migrate-uri", "", "where the source QEMU sends memory (tcp://HOST[:PORT]); default: libvirt's choice"),
		peerURI:       fs.String("peer-uri", "", "the destination URI as the source's libvirtd reaches it; default: --to"),
		relay:         fs.Bool("relay", true, "carry memory, and the disks' mirror of what the guest writes during the move, through the server's handoff relay, compressed with zstd, where the server runs handoff serve (the lab's does); false: QEMU's own streams, uncompressed; --migrate-uri sends memory where it says"),
	}
}

func (f *migrateOptions) options() (libvirt.Options, error) {
	o := libvirt.Options{
		Policy:     switchover.DefaultConfig(),
		MigrateURI: *f.migrateURI,
		PeerURI:    *f.peerURI,
		NoPostCopy: *f.noPostcopy,
	}
	o.Policy.DowntimeTarget = *f.downtime
	switch *f.switchBy {
	case "postcopy":
		o.Policy.SwitchByPostCopy = !o.NoPostCopy
	case "pause":
		o.Policy.SwitchByPostCopy = false
	default:
		return o, fmt.Errorf("%w: --switch %q: choose postcopy or pause", errUsage, *f.switchBy)
	}
	o.Policy.PostCopyAfter = *f.postcopyAfter
	if o.Policy.DowntimeTarget <= 0 {
		return o, fmt.Errorf("%w: --downtime must be positive", errUsage)
	}
	if *f.maxSpeed != "" {
		bits, err := units.BitsPerSecond(*f.maxSpeed)
		if err != nil {
			return o, fmt.Errorf("%w: --max-speed: %v", errUsage, err)
		}
		o.MaxSpeed = uint64(bits / 8)
	}
	if *f.link != "" {
		bits, err := units.BitsPerSecond(*f.link)
		if err != nil {
			return o, fmt.Errorf("%w: --link: %v", errUsage, err)
		}
		o.LinkRate = bits / 8
	}
	switch *f.plan {
	case "auto":
	case "compress":
		o.Plan = &switchover.Plan{Compress: true, Reason: "chosen with --plan compress"}
	case "postcopy":
		o.Plan = &switchover.Plan{PostCopy: true, Reason: "chosen with --plan postcopy"}
	default:
		return o, fmt.Errorf("%w: --plan %q: choose auto, compress or postcopy", errUsage, *f.plan)
	}
	if o.NoPostCopy && o.Plan != nil && o.Plan.PostCopy {
		return o, fmt.Errorf("%w: --plan postcopy and --no-postcopy contradict each other", errUsage)
	}
	return o, nil
}

// resolveEndpoints fills in the lab's hosts where the user named none, and
// the lab's link address when the migration runs between lab hosts.
func resolveEndpoints(ctx context.Context, labDir string, from, to, name *string, o *libvirt.Options) error {
	l, labErr := lab.Load(labDir)
	if *from == "" || *to == "" {
		if labErr != nil {
			return fmt.Errorf("%w: give --from and --to, or start the lab with 'handoff lab up' (%v)", errUsage, labErr)
		}
		where, err := l.GuestHost(ctx)
		if err != nil {
			return err
		}
		// A migration under way leaves from its own source, even where
		// post-copy runs the guest on the other host already.
		if from, u, err := l.MigrationUnderWay(ctx); err == nil && u != nil {
			where = from
		}
		src, dst := l.Server, l.Workstation
		if where == l.Workstation.Name {
			src, dst = dst, src
		}
		if *from == "" {
			*from = src.URI
		}
		if *to == "" {
			*to = dst.URI
		}
	}
	if *name == "" {
		if labErr != nil {
			return fmt.Errorf("%w: name the DOMAIN to migrate", errUsage)
		}
		*name = l.Domain()
	}
	if labErr == nil && (*to == l.Server.URI || *to == l.Workstation.URI) {
		dst := l.Workstation.Name
		if *to == l.Server.URI {
			dst = l.Server.Name
		}
		// The lab's direct address serves only two lab hosts on their
		// own link; from an SSH URI the engine tunnels instead.
		if o.MigrateURI == "" && (*from == l.Server.URI || *from == l.Workstation.URI) {
			o.MigrateURI = l.MigrateURI(dst)
		}
		if o.LinkRate == 0 {
			if bits, err := units.BitsPerSecond(l.Link.Bandwidth); err == nil {
				o.LinkRate = bits / 8
			}
		}
	}
	return nil
}

// humanReporter prints one line per second: enough to follow, not a flood.
func humanReporter(w io.Writer) func(libvirt.Progress) {
	var last time.Duration = -time.Second
	return func(p libvirt.Progress) {
		s, d := p.Sample, p.Decision
		if s.Elapsed-last < time.Second && s.Phase != switchover.PhaseCompleted {
			return
		}
		last = s.Elapsed
		if s.Phase == switchover.PhaseDisks {
			fmt.Fprintf(w, "%6.1fs %-9s %s\n", s.Elapsed.Seconds(), s.Phase, d.Reason)
			return
		}
		pct := 0.0
		if s.Total > 0 {
			pct = 100 * float64(s.Total-min(s.Remaining, s.Total)) / float64(s.Total)
		}
		next := d.Reason
		if d.Converging && d.Action == switchover.Continue && d.SwitchIn > 0 {
			next = fmt.Sprintf("switch in ~%v", d.SwitchIn.Round(time.Second))
		}
		fmt.Fprintf(w, "%6.1fs %-9s pass %-3d %3.0f%%  sent %-9s dirty %-10s link %-10s %s\n",
			s.Elapsed.Seconds(), s.Phase, s.Iteration, pct, units.Bytes(s.Transferred),
			units.Rate(s.DirtyRate), units.Rate(s.Bandwidth), next)
	}
}
