package leasectl

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Keeper holds one image's lease for a grab: it acquires the lease,
// renews it well before it expires, and reports every change, until it is
// released or its context ends.
type Keeper struct {
	Client *Client
	Image  string
	Holder string
	TTL    time.Duration // default 2 minutes; renewed every third of it
}

// Acquire takes the lease; it is refused while another device holds it.
func (k *Keeper) Acquire(ctx context.Context) (Lease, error) {
	if k.TTL <= 0 {
		k.TTL = 2 * time.Minute
	}
	l, err := k.Client.Acquire(ctx, k.Image, k.Holder, k.TTL)
	var held *HeldError
	if errors.As(err, &held) {
		return l, fmt.Errorf("%s is running elsewhere: %w (if that device is lost: handoff lease steal %s --reason ...)", k.Image, err, k.Image)
	}
	return l, err
}

// Renew keeps l alive until ctx ends, sending each renewed lease to
// updates. It returns why it stopped: ctx's end, or the lease lost
// (stolen or expired), which the user must hear about.
func (k *Keeper) Renew(ctx context.Context, l Lease, updates chan<- Lease) error {
	tick := time.NewTicker(k.TTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		next, err := k.Client.Renew(ctx, k.Image, l.ID, k.TTL)
		switch {
		case errors.Is(err, ErrOrphaned) || errors.Is(err, ErrExpired):
			return fmt.Errorf("lost the lease on %s: %w; later checkpoints will be saved as a branch", k.Image, err)
		case err != nil:
			continue // the server may be back before the lease runs out
		}
		l = next
		select {
		case updates <- l:
		default:
		}
	}
}
