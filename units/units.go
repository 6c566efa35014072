package units

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Bytes writes a byte count: "108.3 MB".
func Bytes(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.0f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// Rate writes bytes per second: "2.4 MB/s".
func Rate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.1f GB/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.1f MB/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.0f kB/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f B/s", bps)
}

// Downtime writes a switch's pause: "4 ms", or "not reported" where
// neither side kept one (libvirt forgets a post-copy's pause with the
// transient domain it moved), which is not a pause of 0 ms.
func Downtime(d time.Duration, known bool) string {
	if !known {
		return "not reported"
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// BitsPerSecond reads a rate as tc writes it ("20mbit", "1gbit",
// "500kbit") or in bytes ("100mbps" is 100 MB/s, 800 Mbit/s, as tc has it).
func BitsPerSecond(rate string) (float64, error) {
	s := strings.ToLower(strings.TrimSpace(rate))
	units := []struct {
		suffix string
		mult   float64
	}{
		{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
		{"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8},
	}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || v <= 0 {
				break
			}
			return v * u.mult, nil
		}
	}
	return 0, fmt.Errorf("bandwidth %q: give a rate such as 20mbit, 100mbit or 1gbit", rate)
}
