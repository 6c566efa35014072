package lab

import (
	"fmt"
	"strconv"
	"time"

	"github.com/handoff-dev/handoff/units"
)

// Link is how the lab's link between the two hosts behaves.
type Link struct {
	Bandwidth string        // tc rate, such as "20mbit" or "1gbit"
	RTT       time.Duration // round trip; each direction gets half as delay
}

// DefaultLink is a fast LAN: its round trip is too short to matter.
var DefaultLink = Link{Bandwidth: "1gbit", RTT: 0}

// ShapeCommands are the tc commands that shape one direction of the link.
// The rate is a token bucket (tbf), with a burst of one scheduler tick at
// that rate and a queue of at most 50 ms, so the shaper, not a bloated
// queue, sets the pace and a keystroke waits behind little. The round trip
// needs netem, which not every kernel has (withNetem says whether this one
// does): without it the link has its rate but no added delay.
func ShapeCommands(dev string, l Link, withNetem bool) ([][]string, error) {
	bps, err := units.BitsPerSecond(l.Bandwidth)
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
