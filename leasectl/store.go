package leasectl

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store keeps images' states and changes each atomically. Update hands fn
// the image's head record (its lease, epoch and head, without the
// history); what fn appends to Commits and Log is added to the stored
// history and the record saved, whole or not at all. View returns the
// state with its full history.
type Store interface {
	// Create stores a new image's first state (a branch starts with a
	// commit), refusing with ErrExists if the name is taken.
	Create(ctx context.Context, s *State) error
	Update(ctx context.Context, image string, fn func(*State) error) error
	View(ctx context.Context, image string) (*State, error)
	Close() error
}

var (
	imagesBucket  = []byte("images")
	historyBucket = []byte("history") // one sub-bucket per image
)

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
		for _, name := range [][]byte{imagesBucket, historyBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &BoltStore{db: db}, nil
}

func (b *BoltStore) Create(_ context.Context, s *State) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(imagesBucket).Get([]byte(s.Image)) != nil {
			return fmt.Errorf("%w: %s", ErrExists, s.Image)
		}
		return putState(tx, s)
	})
}

func (b *BoltStore) Update(_ context.Context, image string, fn func(*State) error) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		s, err := getHead(tx, image)
		if err != nil {
			return err
		}
		if err := fn(s); err != nil {
			return err
		}
		return putState(tx, s)
	})
}

func (b *BoltStore) View(_ context.Context, image string) (*State, error) {
	var s *State
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		if s, err = getHead(tx, image); err != nil {
			return err
		}
		h := tx.Bucket(historyBucket).Bucket([]byte(image))
		if h == nil {
			return nil
		}
		s.Commits, err = scan[Commit](h, 'c', s.NCommits, image)
		if err == nil {
			s.Log, err = scan[Event](h, 'e', s.NEvents, image)
		}
		return err
	})
	return s, err
}

func (b *BoltStore) Close() error { return b.db.Close() }

func getHead(tx *bolt.Tx, image string) (*State, error) {
	raw := tx.Bucket(imagesBucket).Get([]byte(image))
	if raw == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoImage, image)
	}
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("image %s is stored damaged: %w", image, err)
	}
	return &s, nil
}

// historyKey orders an image's records: a kind byte, then the sequence
// number big-endian.
func historyKey(kind byte, seq int) []byte {
	k := make([]byte, 9)
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:], uint64(seq))
	return k
}

func putState(tx *bolt.Tx, s *State) error {
	head, commits, events := s.split()
	h, err := tx.Bucket(historyBucket).CreateBucketIfNotExists([]byte(s.Image))
	if err != nil {
		return err
	}
	if err := putRecords(h, 'c', s.NCommits, commits); err != nil {
		return err
	}
	if err := putRecords(h, 'e', s.NEvents, events); err != nil {
		return err
	}
	raw, err := json.Marshal(head)
	if err != nil {
		return err
	}
	return tx.Bucket(imagesBucket).Put([]byte(s.Image), raw)
}

func putRecords[T any](h *bolt.Bucket, kind byte, first int, records []T) error {
	for i, r := range records {
		raw, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := h.Put(historyKey(kind, first+i), raw); err != nil {
			return err
		}
	}
	return nil
}

// scan reads the first n records of a kind; records past n would be from
// no acknowledged change, and a transaction never leaves any.
func scan[T any](h *bolt.Bucket, kind byte, n int, image string) ([]T, error) {
	out := make([]T, 0, n)
	c := h.Cursor()
	for k, v := c.Seek(historyKey(kind, 0)); k != nil && k[0] == kind && len(out) < n; k, v = c.Next() {
		var r T
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("image %s: history record %x is damaged: %w", image, k, err)
		}
		out = append(out, r)
	}
	if len(out) != n {
		return nil, fmt.Errorf("image %s: %d of %d history records of kind %c are missing", image, n-len(out), n, kind)
	}
	return out, nil
}
