package lab

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Link is how the lab's link between the two hosts behaves.
type Link struct {
	Bandwidth string        // tc rate, such as "20mbit" or "1gbit"
	RTT       time.Duration // round trip; each direction gets half as delay
}

// DefaultLink is a fast LAN: its round trip is too short to matter.
var DefaultLink = Link{Bandwidth: "1gbit", RTT: 0}

// BitsPerSecond parses a tc rate ("20mbit", "1gbit", "500kbit", "100mbps").
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

// ShapeCommands are the tc commands that shape one direction of the link.
// The rate is a token bucket (tbf), with a burst of one scheduler tick at
// that rate and a queue of at most 50 ms, so the shaper, not a bloated
// queue, sets the pace and a keystroke waits behind little. The round trip
// needs netem, which not every kernel has (withNetem says whether this one
// does): without it the link has its rate but no added delay.
func ShapeCommands(dev string, l Link, withNetem bool) ([][]string, error) {
	bps, err := BitsPerSecond(l.Bandwidth)
	if err != nil {
		return nil, err
	}
	if l.RTT < 0 {
		return nil, fmt.Errorf("round-trip time %v: must not be negative", l.RTT)
	}
	burst := max(int(bps/8/250), 32<<10)
	tbf := []string{"tbf", "rate", l.Bandwidth, "burst", strconv.Itoa(burst), "latency", "50ms"}
	if l.RTT == 0 || !withNetem {
		return [][]string{append([]string{"qdisc", "replace", "dev", dev, "root", "handle", "1:"}, tbf...)}, nil
	}
	return [][]string{
		{"qdisc", "replace", "dev", dev, "root", "handle", "1:", "netem", "delay", fmt.Sprintf("%dus", (l.RTT / 2).Microseconds()), "limit", "100000"},
		append([]string{"qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:"}, tbf...),
	}, nil
}
