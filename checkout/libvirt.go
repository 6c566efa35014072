package checkout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
)

// LibvirtHost is a Host reached through a libvirt connection.
type LibvirtHost struct {
	Conn *libvirt.Conn // the caller's; the checkout does not close it
	// Migrate are the options for a migration *to* this host.
	Migrate libvirt.Options
}

var _ Host = LibvirtHost{}

func (h LibvirtHost) URI() string { return h.Conn.URI() }

// Runs reports whether domain runs or is paused here; libvirt's calls take
// no context.
func (h LibvirtHost) Runs(_ context.Context, domain string) (bool, error) {
	d, err := h.Conn.Lookup(domain)
	if errors.Is(err, libvirt.ErrNoDomain) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	st, err := d.State()
	return st == libvirt.StateRunning || st == libvirt.StatePaused, err
}

// Screen finds domain's VNC display here; the dial goes through this
// host's connection (inside its SSH session, for a remote host).
func (h LibvirtHost) Screen(_ context.Context, domain string) (event.Dial, error) {
	d, err := h.Conn.Lookup(domain)
	if err != nil {
		return nil, err
	}
	addr, err := d.VNC()
	if err != nil {
		return nil, err
	}
	c := h.Conn
	return func(ctx context.Context) (net.Conn, error) { return c.DialVNC(ctx, addr) }, nil
}

// MigrateTo starts the live migration to another LibvirtHost, carrying
// the disks as a DiskMove prepared them.
func (h LibvirtHost) MigrateTo(ctx context.Context, to Host, domain string, disks Prepared) (Migration, error) {
	dst, ok := to.(LibvirtHost)
	if !ok {
		return nil, fmt.Errorf("migrate %s: the destination %T is not a libvirt host", domain, to)
	}
	opts := dst.Migrate
	if dm, ok := disks.(*DiskMove); ok && dm.Copy != nil {
		opts.Disks = dm.Copy
	}
	m, err := libvirt.Start(ctx, h.Conn, dst.Conn, domain, opts)
	if err != nil {
		return nil, err
	}
	return libvirtMigration{m}, nil
}

type libvirtMigration struct{ m *libvirt.Migration }

func (m libvirtMigration) PostCopy() error { return m.m.PostCopy() }
func (m libvirtMigration) Plan() string    { return m.m.Plan().Reason }
func (m libvirtMigration) Abort() error    { return m.m.Abort() }

func (m libvirtMigration) Run(progress func(event.Progress)) (Result, error) {
	res, err := libvirt.Run(m.m, func(p libvirt.Progress) {
		progress(event.Progress{Sample: p.Sample, Decision: p.Decision})
	})
	if errors.Is(err, libvirt.ErrAborted) {
		err = aborted{err}
	}
	return Result{Mode: res.Mode, Downtime: res.Downtime, DowntimeKnown: res.DowntimeKnown}, err
}

// aborted marks libvirt's abort as ErrAborted, keeping its message.
type aborted struct{ error }

func (a aborted) Is(target error) bool { return target == ErrAborted }
func (a aborted) Unwrap() error        { return a.error }

// Leased is k as the checkout's Keeper; nil when k is: a read-only
// checkout.
func Leased(k *leasectl.Keeper) Keeper {
	if k == nil {
		return nil
	}
	return leaseKeeper{k}
}

type leaseKeeper struct{ k *leasectl.Keeper }

func (l leaseKeeper) Acquire(ctx context.Context) (Lease, error) {
	got, err := l.k.Acquire(ctx)
	return Lease(got), err
}

// Renew forwards the keeper's renewals until it stops; the forwarding
// ends with it.
func (l leaseKeeper) Renew(ctx context.Context, held Lease, renewed func(Lease)) error {
	updates := make(chan leasectl.Lease, 1)
	stopped := make(chan error, 1)
	go func() { stopped <- l.k.Renew(ctx, leasectl.Lease(held), updates) }()
	for {
		select {
		case u := <-updates:
			renewed(Lease(u))
		case err := <-stopped:
			return err
		}
	}
}

func (l leaseKeeper) Release(ctx context.Context, held Lease) error {
	return l.k.Client.Release(ctx, l.k.Image, held.ID)
}

// LeaseLog is the lease server's history of k's image as the checkout's
// CommitLog: commits are made under k's holder name.
func LeaseLog(k *leasectl.Keeper) CommitLog { return leaseLog{k} }

type leaseLog struct{ k *leasectl.Keeper }

func (l leaseLog) Head(ctx context.Context) (string, error) {
	st, err := l.k.Client.Status(ctx, l.k.Image)
	if err != nil {
		return "", fmt.Errorf("read the history of %s on the server: %w", l.k.Image, err)
	}
	return st.Head, nil
}

func (l leaseLog) request(held Lease, parent string, s Saved) leasectl.CommitRequest {
	return leasectl.CommitRequest{Parent: parent, LeaseID: held.ID, Holder: l.k.Holder,
		Manifest: leasectl.Manifest{Root: s.Memory.String(), Meta: s.Meta()}}
}

func (l leaseLog) Commit(ctx context.Context, held Lease, parent string, s Saved) (string, error) {
	c, err := l.k.Client.Commit(ctx, l.k.Image, l.request(held, parent, s))
	for _, refused := range []error{leasectl.ErrRefused, leasectl.ErrOrphaned, leasectl.ErrExpired, leasectl.ErrNotHead} {
		if errors.Is(err, refused) {
			return "", fmt.Errorf("%w (%w)", ErrRefused, err)
		}
	}
	return c.ID, err
}

func (l leaseLog) Branch(ctx context.Context, parent string, s Saved) (string, string, error) {
	image := fmt.Sprintf("%s-%s-%s", l.k.Image, nameSafe(l.k.Holder), time.Now().UTC().Format("20060102T150405"))
	if len(image) > 128 {
		image = image[len(image)-128:]
	}
	c, err := l.k.Client.Branch(ctx, l.k.Image, image, l.request(Lease{}, parent, s))
	if err != nil {
		return "", "", fmt.Errorf("branch %s as %s on the server: %w", l.k.Image, image, err)
	}
	return image, c.ID, nil
}

// nameSafe keeps what an image's name may hold of s: letters, digits,
// '.', '_' and '-'.
func nameSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 128 && (r == '.' || r == '_' || r == '-' || 'a' <= r|0x20 && r|0x20 <= 'z' || '0' <= r && r <= '9') {
			return r
		}
		return '-'
	}, s)
}
