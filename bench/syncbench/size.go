package syncbench

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads an image size as people write it: 2G, 2GiB, 512M, 64MiB,
// or bytes. The units are binary, as disk sizes are.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	shift := 0
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
	}
	if shift > 0 {
		t = t[:len(t)-1]
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: give a positive number with K, M or G (binary units), e.g. 2G or 64M", s)
	}
	return int64(n * float64(int64(1)<<shift)), nil
}
