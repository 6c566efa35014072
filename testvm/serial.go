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
	Problem   string  // "" when memory integrity holds; else what broke
	// Disk is set by a guest with a disk (the Debian guest): DiskSeq is
	// the last record it knows fsynced, DiskProblem what broke there.
	Disk        bool
	DiskSeq     int
	DiskProblem string
}

// Prefixes of each part of a FAIL verdict on a guest with a disk.
const (
	memoryPart = "memory: "
	diskPart   = "disk: "
)

// FormatTick renders a tick as its serial line (without newline). A guest
// with a disk adds disk_seq and names the part of each failure:
//
//	handoff-guest tick=9 uptime=41.20 dirtied_mb=18 disk_seq=36 integrity FAIL disk: record 33 is missing ...
func FormatTick(t Tick) string {
	s := fmt.Sprintf("%stick=%d uptime=%.2f dirtied_mb=%d ", linePrefix, t.N, t.Uptime, t.DirtiedMB)
	if t.Disk {
		s += fmt.Sprintf("disk_seq=%d ", t.DiskSeq)
	}
	if p := t.Problems(); p != "" {
		return s + "integrity FAIL " + p
	}
	return s + "integrity ok"
}

// Problems is what broke, memory and disk, as the verdict says it.
func (t Tick) Problems() string {
	var parts []string
	switch {
	case t.Problem != "" && t.Disk:
		parts = append(parts, memoryPart+t.Problem)
	case t.Problem != "":
		parts = append(parts, t.Problem)
	}
	if t.DiskProblem != "" {
		parts = append(parts, diskPart+t.DiskProblem)
	}
	return strings.Join(parts, "; ")
}

// DiskStart is what a guest with a disk found on it when its agent
// started: after a power cut, every record fsynced before it must be there.
type DiskStart struct {
	Records  int    // valid records found
	Fsynced  int    // the last record the disk says was fsynced
	Last     int    // the newest record found (later than Fsynced if in flight at the cut)
	Repaired int    // torn blocks of writes in flight at the cut, cleared
	Problem  string // "" when every fsynced record is there
}

// FormatDiskStart renders the agent's start line for its disk.
func FormatDiskStart(d DiskStart) string {
	s := fmt.Sprintf("%sdisk start records=%d fsynced=%d last=%d repaired=%d integrity ", linePrefix, d.Records, d.Fsynced, d.Last, d.Repaired)
	if d.Problem == "" {
		return s + "ok"
	}
	return s + "FAIL " + d.Problem
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
	Integrity string  // "ok" or "FAIL" at the last tick ("" before the first): memory and disk
	Problem   string  // what broke, when Integrity is FAIL
	// Disk is "" for a guest without a disk, else the disk's own verdict
	// at the last tick, "ok" or "FAIL" (DiskProblem says why).
	Disk        string
	DiskSeq     int // the last record fsynced, at the last tick
	DiskProblem string
	// Starts counts the agent's disk start lines, one per boot (or
	// restart); Start is the last of them.
	Starts int
	Start  DiskStart
	Keys   string // every key read so far, in order, as typed bytes
	Panic  string // the kernel's panic or oops line, if it had one: the guest is dead
}

// panicMarks start the kernel's lines that mean the guest is dead or dying.
var panicMarks = []string{"Kernel panic - not syncing", "BUG: ", "Oops: ", "kernel BUG at ", "list_add corruption", "list_del corruption", "general protection fault"}

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
		if d, ok := parseDiskStart(rest); ok {
			st.Starts++
			st.Start = d
			continue
		}
		if t, ok := parseTick(rest); ok {
			st.Tick, st.Uptime, st.DirtiedMB = t.N, t.Uptime, t.DirtiedMB
			st.Integrity, st.Problem = "ok", t.Problems()
			if st.Problem != "" {
				st.Integrity = "FAIL"
			}
			st.Disk, st.DiskSeq, st.DiskProblem = "", 0, ""
			if t.Disk {
				st.Disk, st.DiskSeq, st.DiskProblem = "ok", t.DiskSeq, t.DiskProblem
				if t.DiskProblem != "" {
					st.Disk = "FAIL"
				}
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
		case "disk_seq":
			t.Disk = true
			t.DiskSeq, err = strconv.Atoi(v)
			seen--
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
	problem, ok := parseVerdict(verdict)
	if !ok {
		return Tick{}, false
	}
	if !t.Disk {
		t.Problem = problem
		return t, true
	}
	// A guest with a disk names each part of its verdict.
	for _, part := range strings.Split(problem, "; ") {
		switch {
		case part == "":
		case strings.HasPrefix(part, diskPart):
			t.DiskProblem = strings.TrimPrefix(part, diskPart)
		default:
			t.Problem = strings.TrimPrefix(part, memoryPart)
		}
	}
	return t, true
}

// parseVerdict reads "ok" or "FAIL reason" into the reason ("" for ok).
func parseVerdict(verdict string) (problem string, ok bool) {
	switch {
	case verdict == "ok":
		return "", true
	case strings.HasPrefix(verdict, "FAIL"):
		if p := strings.TrimSpace(strings.TrimPrefix(verdict, "FAIL")); p != "" {
			return p, true
		}
		return "unspecified", true
	}
	return "", false
}

func parseDiskStart(s string) (DiskStart, bool) {
	rest, ok := strings.CutPrefix(s, "disk start ")
	if !ok {
		return DiskStart{}, false
	}
	fields, verdict, found := strings.Cut(rest, " integrity ")
	if !found {
		return DiskStart{}, false
	}
	var d DiskStart
	for _, f := range strings.Fields(fields) {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.Atoi(v)
		if err != nil {
			return DiskStart{}, false
		}
		switch k {
		case "records":
			d.Records = n
		case "fsynced":
			d.Fsynced = n
		case "last":
			d.Last = n
		case "repaired":
			d.Repaired = n
		}
	}
	d.Problem, ok = parseVerdict(verdict)
	return d, ok
}
