package testvm

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// linePrefix starts every line the agent writes to the serial console.
const linePrefix = "handoff-guest "

// Tick is what the agent reports once a second.
type Tick struct {
	N         int
	Uptime    float64 // seconds since the guest booted
	DirtiedMB int     // MB the agent has written into its working set so far
	Problem   string  // "" when integrity holds; else what broke
}

// FormatTick renders a tick as its serial line (without newline).
func FormatTick(t Tick) string {
	s := fmt.Sprintf("%stick=%d uptime=%.2f dirtied_mb=%d integrity ", linePrefix, t.N, t.Uptime, t.DirtiedMB)
	if t.Problem == "" {
		return s + "ok"
	}
	return s + "FAIL " + t.Problem
}

// FormatKey renders bytes read from the console as a key line.
func FormatKey(b []byte) string {
	return fmt.Sprintf("%skey=%q", linePrefix, b)
}

// Status is what a serial log says about the guest so far.
type Status struct {
	Tick      int     // last tick number seen (0 before the first)
	Uptime    float64 // guest uptime at that tick
	DirtiedMB int     // MB dirtied by that tick
	Integrity string  // "ok" or "FAIL" at the last tick ("" before the first)
	Problem   string  // what broke, when Integrity is FAIL
	Keys      string  // every key read so far, in order, as typed bytes
	Panic     string  // the kernel's panic or oops line, if it had one: the guest is dead
}

// panicMarks start the kernel's lines that mean the guest is dead or dying.
var panicMarks = []string{"Kernel panic - not syncing", "BUG: ", "Oops: "}

// ParseSerialLog reads a guest's serial log. Lines that are not the agent's
// (kernel messages, a torn last line) are passed over.
func ParseSerialLog(r io.Reader) (Status, error) {
	var st Status
	var keys strings.Builder
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, linePrefix)
		if i < 0 {
			for _, mark := range panicMarks {
				if j := strings.Index(line, mark); j >= 0 && st.Panic == "" {
					st.Panic = line[j:]
				}
			}
			continue
		}
		rest := line[i+len(linePrefix):]
		if quoted, ok := strings.CutPrefix(rest, "key="); ok {
			if k, err := strconv.Unquote(quoted); err == nil {
				keys.WriteString(k)
			}
			continue
		}
		if t, ok := parseTick(rest); ok {
			st.Tick, st.Uptime, st.DirtiedMB = t.N, t.Uptime, t.DirtiedMB
			st.Integrity, st.Problem = "ok", t.Problem
			if t.Problem != "" {
				st.Integrity = "FAIL"
			}
		}
	}
	st.Keys = keys.String()
	if err := sc.Err(); err != nil {
		return st, fmt.Errorf("read guest serial log: %w", err)
	}
	return st, nil
}

func parseTick(s string) (Tick, bool) {
	fields, verdict, found := strings.Cut(s, " integrity ")
	if !found {
		return Tick{}, false
	}
	var t Tick
	seen := 0
	for _, f := range strings.Fields(fields) {
		k, v, _ := strings.Cut(f, "=")
		var err error
		switch k {
		case "tick":
			t.N, err = strconv.Atoi(v)
		case "uptime":
			t.Uptime, err = strconv.ParseFloat(v, 64)
		case "dirtied_mb":
			t.DirtiedMB, err = strconv.Atoi(v)
		default:
			continue
		}
		if err != nil {
			return Tick{}, false
		}
		seen++
	}
	if seen != 3 {
		return Tick{}, false
	}
	switch {
	case verdict == "ok":
	case strings.HasPrefix(verdict, "FAIL"):
		t.Problem = strings.TrimSpace(strings.TrimPrefix(verdict, "FAIL"))
		if t.Problem == "" {
			t.Problem = "unspecified"
		}
	default:
		return Tick{}, false
	}
	return t, true
}
