package leasectl

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"time"
)

// Service runs the state machine on a store, with the clock and the IDs
// it hands out.
type Service struct {
	Store Store
	Now   func() time.Time
}

func (sv *Service) now() time.Time {
	if sv.Now != nil {
		return sv.Now()
	}
	return time.Now()
}

func newID(prefix string) string {
	var b [8]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

var imageName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func checkImage(image string) error {
	if !imageName.MatchString(image) {
		return fmt.Errorf("%w: image name %q: use letters, digits, '.', '_' and '-'", ErrBadInput, image)
	}
	return nil
}

// Create registers a new image.
func (sv *Service) Create(ctx context.Context, image string) error {
	if err := checkImage(image); err != nil {
		return err
	}
	return sv.Store.Create(ctx, &State{Image: image})
}

func (sv *Service) update(ctx context.Context, image string, fn func(*State) error) error {
	if err := checkImage(image); err != nil {
		return err
	}
	return sv.Store.Update(ctx, image, fn)
}

func (sv *Service) Acquire(ctx context.Context, image, holder string, ttl time.Duration) (l Lease, err error) {
	err = sv.update(ctx, image, func(s *State) error {
		l, err = s.Acquire(holder, ttl, sv.now(), newID("L"))
		return err
	})
	return l, err
}

func (sv *Service) Renew(ctx context.Context, image, lease string, ttl time.Duration) (l Lease, err error) {
	err = sv.update(ctx, image, func(s *State) error {
		l, err = s.Renew(lease, ttl, sv.now())
		return err
	})
	return l, err
}

func (sv *Service) Release(ctx context.Context, image, lease string) error {
	return sv.update(ctx, image, func(s *State) error { return s.Release(lease, sv.now()) })
}

func (sv *Service) Steal(ctx context.Context, image, holder, reason string, ttl time.Duration) (l Lease, err error) {
	err = sv.update(ctx, image, func(s *State) error {
		l, err = s.Steal(holder, reason, ttl, sv.now(), newID("L"))
		return err
	})
	return l, err
}

func (sv *Service) Checkout(ctx context.Context, image string) (Checkout, error) {
	s, err := sv.Status(ctx, image)
	if err != nil {
		return Checkout{}, err
	}
	return s.Checkout(), nil
}

func (sv *Service) Commit(ctx context.Context, image string, req CommitRequest) (c Commit, err error) {
	err = sv.update(ctx, image, func(s *State) error {
		c, err = s.Commit(req, sv.now(), newID("c"))
		return err
	})
	return c, err
}

// Branch saves a commit the image refused as the first commit of a new
// image, so the work is kept. The new image appears whole or not at all.
func (sv *Service) Branch(ctx context.Context, image, newImage string, req CommitRequest) (Commit, error) {
	if err := checkImage(newImage); err != nil {
		return Commit{}, err
	}
	src, err := sv.Status(ctx, image)
	if err != nil {
		return Commit{}, err
	}
	dst := &State{Image: newImage}
	c, err := Branch(src, dst, req, sv.now(), newID("c"))
	if err != nil {
		return Commit{}, err
	}
	if err := sv.Store.Create(ctx, dst); err != nil {
		return Commit{}, err
	}
	// The source's log notes the branch; the branch itself stands even if
	// this last note fails.
	sv.update(ctx, image, func(s *State) error {
		s.event(sv.now(), "branch", req.Holder, 0, "to "+newImage)
		return nil
	})
	return c, nil
}

func (sv *Service) Status(ctx context.Context, image string) (*State, error) {
	if err := checkImage(image); err != nil {
		return nil, err
	}
	return sv.Store.View(ctx, image)
}
