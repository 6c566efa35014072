package syncengine

import (
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

// Hash names a chunk or a manifest by its content (BLAKE3-256).
type Hash [32]byte

// Sum hashes b.
func Sum(b []byte) Hash { return Hash(blake3.Sum256(b)) }

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the zero value, which stands for a chunk of
// zeroes: such chunks are never stored or sent.
func (h Hash) IsZero() bool { return h == Hash{} }

// ParseHash reads a hash written by String.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("%q is not a hash (64 hex digits)", s)
	}
	copy(h[:], b)
	return h, nil
}

func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

func (h *Hash) UnmarshalText(b []byte) error {
	p, err := ParseHash(string(b))
	*h = p
	return err
}
