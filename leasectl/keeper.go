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

// renewRetry is the wait before a renewal that failed is tried again.
const renewRetry = 5 * time.Second

// Renew keeps l alive until ctx ends, sending each renewed lease to
// updates. It returns why it stopped: ctx's end, or the lease lost
// (stolen or expired), which the user must hear about.
func (k *Keeper) Renew(ctx context.Context, l Lease, updates chan<- Lease) error {
	wait := time.NewTimer(k.TTL / 3)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait.C:
		}
		next, err := k.Client.Renew(ctx, k.Image, l.ID, k.TTL)
		switch {
		case errors.Is(err, ErrOrphaned) || errors.Is(err, ErrExpired):
			return fmt.Errorf("lost the lease on %s: %w; later checkpoints will be saved as a branch", k.Image, err)
		case err != nil:
			// The server may be back before the lease runs out: ask again
			// soon, not a third of the lease later.
			wait.Reset(min(k.TTL/3, renewRetry))
			continue
		}
		wait.Reset(k.TTL / 3)
		l = next
		select {
		case updates <- l:
		default:
		}
	}
}
