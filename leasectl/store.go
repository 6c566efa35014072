package leasectl

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store keeps images' states and changes each atomically: fn sees the
// current state and its changes are saved whole, or not at all.
type Store interface {
	Create(ctx context.Context, image string) error
	Update(ctx context.Context, image string, fn func(*State) error) error
	View(ctx context.Context, image string) (*State, error)
	Close() error
}

var imagesBucket = []byte("images")

// BoltStore keeps states in one bbolt file: each change is one
// transaction, synced before it is acknowledged, so a kill -9 at any
// moment leaves every image as it was before or after a whole change.
type BoltStore struct{ db *bolt.DB }

// OpenBolt opens (or makes) the store at path.
func OpenBolt(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open lease store %s: %w (is another handoff serve using it?)", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(imagesBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &BoltStore{db: db}, nil
}

func (b *BoltStore) Create(_ context.Context, image string) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(imagesBucket)
		if bk.Get([]byte(image)) != nil {
			return fmt.Errorf("%w: %s", ErrExists, image)
		}
		return put(bk, &State{Image: image})
	})
}

func (b *BoltStore) Update(_ context.Context, image string, fn func(*State) error) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(imagesBucket)
		s, err := get(bk, image)
		if err != nil {
			return err
		}
		if err := fn(s); err != nil {
			return err
		}
		return put(bk, s)
	})
}

func (b *BoltStore) View(_ context.Context, image string) (*State, error) {
	var s *State
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		s, err = get(tx.Bucket(imagesBucket), image)
		return err
	})
	return s, err
}

func (b *BoltStore) Close() error { return b.db.Close() }

func get(bk *bolt.Bucket, image string) (*State, error) {
	raw := bk.Get([]byte(image))
	if raw == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoImage, image)
	}
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("image %s is stored damaged: %w", image, err)
	}
	return &s, nil
}

func put(bk *bolt.Bucket, s *State) error {
	raw, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return bk.Put([]byte(s.Image), raw)
}
