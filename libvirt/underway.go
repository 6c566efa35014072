package libvirt

import (
	"context"
	"errors"
	"fmt"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/handoff-dev/handoff/switchover"
)

// UnderWay is an outgoing migration found running on a source host: a
// peer-to-peer job lives in the source's libvirtd, and goes on when the
// client that started it dies.
type UnderWay struct {
	Domain  string
	Source  string // the source's URI
	Elapsed time.Duration
	Since   time.Time // when the job began, by this machine's clock
}

// UnderWayError is Start's refusal to begin a second migration of a domain
// whose first one still runs.
type UnderWayError struct {
	UnderWay
	Dest string // the destination the refused move named
}

func (e *UnderWayError) Error() string {
	return fmt.Sprintf("a migration of %s from %s is under way since %s (%v ago), started by a client that is gone or still running: take it over with 'handoff migrate --from %s --to %s %s' (its own destination), which drives it on and aborts it on Ctrl-C",
		e.Domain, e.Source, e.Since.Format(time.TimeOnly), e.Elapsed.Round(time.Second), e.Source, e.Dest, e.Domain)
}

// FindUnderWay returns the outgoing migration of name running on src, or
// nil when there is none.
func FindUnderWay(src *Conn, name string) (*UnderWay, error) {
	dom, err := src.Lookup(name)
	if err != nil {
		return nil, err
	}
	return underWay(dom)
}

func underWay(dom *Domain) (*UnderWay, error) {
	// A domain that is not running has no job, and libvirt refuses to
	// read one: leave it to the caller to say what its state means.
	switch st, err := dom.State(); {
	case err != nil:
		return nil, err
	case st == StateShutoff || st == StateOther:
		return nil, nil
	}
	typ, params, err := dom.conn.lv.DomainGetJobStats(dom.dom, 0)
	if err != nil {
		if golibvirt.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read the job of %s on %s: %w", dom.Name(), dom.conn.uri, err)
	}
	if golibvirt.DomainJobType(typ) == golibvirt.DomainJobNone {
		return nil, nil
	}
	var op uint64
	for _, p := range params {
		if p.Field == "operation" {
			op, _ = paramUint(p.Value)
		}
	}
	if golibvirt.DomainJobOperation(op) != golibvirt.DomainJobOperationStrMigrationOut {
		return nil, nil
	}
	elapsed := parseJobStats(params).elapsed
	return &UnderWay{Domain: dom.Name(), Source: dom.conn.uri, Elapsed: elapsed, Since: time.Now().Add(-elapsed)}, nil
}

// Attach takes over a migration job under way from src to dst, as Start's
// job would run on: its reports, the policy's switch, PostCopy and Abort,
// and opts.MaxSpeed, if set, as the job's new cap.
// The job's flags are the first client's: if it was started without
// post-copy, asking for it fails, and says so.
func Attach(ctx context.Context, src, dst *Conn, u *UnderWay, opts Options) (*Migration, error) {
	opts = withDefaults(opts)
	dom, err := src.Lookup(u.Domain)
	if err != nil {
		return nil, err
	}
	if opts.Plan == nil {
		opts.Plan = &switchover.Plan{PostCopy: !opts.NoPostCopy, Reason: fmt.Sprintf("taken over: the job under way since %s, as its first client set it up", u.Since.Format(time.TimeOnly))}
	}
	if opts.MaxSpeed > 0 {
		// The new client's cap replaces the first one's (libvirt counts MiB/s).
		if err := src.lv.DomainMigrateSetMaxSpeed(dom.dom, max(1, opts.MaxSpeed>>20), 0); err != nil {
			return nil, fmt.Errorf("set the speed of the migration of %s under way: %w", u.Domain, err)
		}
	}
	m := newMigration(src, dst, dom, opts, nil)
	perform := m.awaitJobEnd
	switch st, _ := dom.State(); st {
	case StatePostcopy:
		m.phase = switchover.PhasePostcopy
	case StatePostcopyFailed:
		// Its stream broke: drive resumes it, as for a break of its own.
		m.phase = switchover.PhasePostcopy
		perform = func() error { return errBrokenBeforeTakeOver }
	}
	go m.drive(ctx, perform)
	return m, nil
}

// errBrokenBeforeTakeOver is why a job taken over in a broken post-copy
// is resumed.
var errBrokenBeforeTakeOver = errors.New("its post-copy stream broke before this client took it over")

// errEndedBeforeSwitch is what a taken-over job that ended with the VM
// still on the source reports.
var errEndedBeforeSwitch = errors.New("the job ended before the switch (cancelled or failed)")

// awaitJobEnd stands in for the Perform call a taken-over job has no
// part in: it returns when the source's job ends, nil if the VM then runs
// on the destination.
func (m *Migration) awaitJobEnd() error {
	for {
		u, err := underWay(m.dom)
		if err == nil && u == nil {
			break
		}
		if st, _ := m.dom.State(); st == StatePostcopyFailed {
			return errors.New("its post-copy stream broke")
		}
		if err != nil {
			// The source's domain goes when the migration completes.
			if st, _ := m.dom.State(); st != StateShutoff {
				return err
			}
			break
		}
		time.Sleep(m.opts.PollInterval)
	}
	if there, err := m.dst.Lookup(m.dom.Name()); err == nil {
		if st, _ := there.State(); st == StateRunning {
			return nil
		}
	}
	return errEndedBeforeSwitch
}
