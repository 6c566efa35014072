package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

var (
	theLab *lab.Lab
	bin    string // the handoff binary under test
)

func TestMain(m *testing.M) {
	// An idle guest: grab's rendering shares the two cores with it. The
	// libvirt package's tests migrate a dirtying guest and check its
	// integrity.
	labtest.MainWithBinary(m, "cli", lab.Config{Guest: lab.GuestConfig{MemMB: 256, DirtyMBps: 0, WSSMB: 64}}, func(l *lab.Lab, b string) int {
		theLab, bin = l, b
		return m.Run()
	})
}

func handoff(t *testing.T, args ...string) labtest.Result {
	t.Helper()
	return labtest.Run(t, bin, args...)
}

func statusJSON(t *testing.T) lab.Status {
	t.Helper()
	r := handoff(t, "lab", "status", "--json", "--dir", theLab.Dir)
	if r.Code != 0 {
		t.Fatalf("lab status: exit %d: %s", r.Code, r.Stderr)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &raw); err != nil {
		t.Fatalf("lab status --json printed %q: %v", r.Stdout, err)
	}
	for _, k := range []string{"server_uri", "workstation_uri", "guest_host", "guest_tick", "guest_integrity"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("lab status --json lacks %q: %s", k, r.Stdout)
		}
	}
	var st lab.Status
	json.Unmarshal([]byte(r.Stdout), &st)
	return st
}

func TestHelpAnswers(t *testing.T) {
	r := handoff(t, "--help")
	for _, c := range []string{"grab", "migrate", "lab", "lease", "sync", "serve", "bench"} {
		if !strings.Contains(r.Stdout, "  "+c+" ") {
			t.Errorf("handoff --help does not list %q:\n%s", c, r.Stdout)
		}
	}
	r = handoff(t, "migrate", "--help")
	if r.Code != 0 || !strings.Contains(r.Stdout, "Usage: handoff migrate") || !strings.Contains(r.Stdout, "-downtime") {
		t.Errorf("handoff migrate --help: exit %d, %q", r.Code, r.Stdout)
	}
	r = handoff(t, "frobnicate")
	if r.Code != 2 || !strings.Contains(r.Stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", r.Code, r.Stderr)
	}
}

func TestLabStatusJSON(t *testing.T) {
	st := statusJSON(t)
	if st.GuestHost != "server" || st.GuestIntegrity != "ok" || st.GuestTick < 1 {
		t.Fatalf("lab status = %+v, want the guest ticking on the server with integrity ok", st)
	}
	if st.ServerURI != theLab.Server.URI || st.WorkstationURI != theLab.Workstation.URI {
		t.Fatalf("lab status URIs = %s, %s", st.ServerURI, st.WorkstationURI)
	}
}

func TestMigrateJSONThereAndHumanBack(t *testing.T) {
	before := statusJSON(t)
	r := handoff(t, "migrate", "--json", "--lab", theLab.Dir, "--from", theLab.Server.URI, "--to", theLab.Workstation.URI, lab.GuestName)
	if r.Code != 0 {
		t.Fatalf("migrate --json: exit %d\nstdout %s\nstderr %s", r.Code, r.Stdout, r.Stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	if len(lines) < 2 {
		t.Fatalf("migrate --json printed %d lines, want progress and a result: %s", len(lines), r.Stdout)
	}
	for _, line := range lines[:len(lines)-1] {
		var p map[string]any
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatalf("progress line %q: %v", line, err)
		}
		for _, k := range []string{"phase", "iteration", "dirty_rate_bps", "bandwidth_bps", "remaining_bytes", "transferred_bytes", "elapsed_ms", "decision"} {
			if _, ok := p[k]; !ok {
				t.Fatalf("progress line lacks %q: %s", k, line)
			}
		}
	}
	var last struct {
		Phase            string `json:"phase"`
		Mode             string `json:"mode"`
		DowntimeMs       *int64 `json:"downtime_ms"`
		TotalMs          int64  `json:"total_ms"`
		TransferredBytes uint64 `json:"transferred_bytes"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	if last.Phase != "completed" || last.DowntimeMs == nil || last.TotalMs <= 0 || last.TransferredBytes == 0 || (last.Mode != "precopy" && last.Mode != "postcopy") {
		t.Fatalf("last line %s, want the completed job's figures", lines[len(lines)-1])
	}
	if err := theLab.WaitTick(context.Background(), before.GuestTick+3, time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := statusJSON(t); st.GuestHost != "workstation" || st.GuestIntegrity != "ok" {
		t.Fatalf("after migrate: %+v", st)
	}

	// Back, with the lab's defaults filling in --from and --to.
	r = handoff(t, "migrate", "--lab", theLab.Dir)
	if r.Code != 0 || !strings.Contains(r.Stdout, "now runs on "+theLab.Server.URI) || !strings.Contains(r.Stdout, "plan:") {
		t.Fatalf("migrate back: exit %d\nstdout %s\nstderr %s", r.Code, r.Stdout, r.Stderr)
	}
	if st := statusJSON(t); st.GuestHost != "server" || st.GuestIntegrity != "ok" {
		t.Fatalf("after migrating back: %+v", st)
	}
}

// slowMigration starts a slow migration to the workstation and returns
// once memory flows, with the rest of its --json output and its stderr.
func slowMigration(t *testing.T) (*exec.Cmd, *bufio.Scanner, *bytes.Buffer) {
	t.Helper()
	// Through the relay, as migrate goes by default: its workstation end
	// runs apart from the client, and outlives it.
	cmd, sc, errOut := startHandoff(t, "migrate", "--lab", theLab.Dir, "--max-speed", "8mbit", "--json")
	for sc.Scan() {
		var p struct {
			TransferredBytes uint64 `json:"transferred_bytes"`
		}
		json.Unmarshal(sc.Bytes(), &p)
		if p.TransferredBytes > 0 {
			break
		}
	}
	return cmd, sc, errOut
}

// startHandoff runs handoff in the background, its stdout to be read line
// by line; it is killed when the test ends.
func startHandoff(t *testing.T, args ...string) (*exec.Cmd, *bufio.Scanner, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, bufio.NewScanner(stdout), &errOut
}

func TestCtrlCAbortsAndTheGuestKeepsRunningOnTheSource(t *testing.T) {
	cmd, sc, errOut := slowMigration(t)
	cmd.Process.Signal(syscall.SIGINT)
	for sc.Scan() {
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("after Ctrl-C: %v, want exit 1", err)
	}
	if msg := errOut.String(); !strings.Contains(msg, "aborted") || !strings.Contains(msg, "keeps running") {
		t.Fatalf("after Ctrl-C the error says %q; want it to say the migration was aborted and the VM keeps running", msg)
	}
	if st := statusJSON(t); st.GuestHost != "server" || st.GuestIntegrity != "ok" {
		t.Fatalf("after Ctrl-C: %+v", st)
	}
}

func TestMigrateBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no lab and no URIs", []string{"migrate", "--lab", "/nonexistent"}, 2, "give --from and --to"},
		{"bad URI", []string{"migrate", "--from", "qemu:///sytem", "--to", "qemu:///session", "vm"}, 1, "path must be /system or /session"},
		{"missing domain", []string{"migrate", "--lab", theLab.Dir, "--from", theLab.Server.URI, "--to", theLab.Workstation.URI, "nope"}, 1, `no such domain "nope"`},
		{"unreachable host", []string{"migrate", "--from", "qemu+tcp://127.0.0.1:1/system", "--to", "qemu:///session", "vm"}, 1, "reachable"},
		{"bad plan", []string{"migrate", "--plan", "teleport", "vm"}, 2, "choose auto, compress or postcopy"},
		{"bad flag", []string{"migrate", "--frm", "x"}, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := handoff(t, tt.args...)
			if r.Code != tt.code || !strings.Contains(r.Stderr, tt.want) {
				t.Fatalf("handoff %v: exit %d, stderr %q; want exit %d and %q", tt.args, r.Code, r.Stderr, tt.code, tt.want)
			}
		})
	}
}

// startAndLose starts a slow migration to the workstation and kills its
// client with SIGKILL once memory flows: the job goes on in libvirtd.
func startAndLose(t *testing.T) {
	t.Helper()
	cmd, _, _ := slowMigration(t)
	cmd.Process.Kill()
	cmd.Wait()
	if st := statusJSON(t); st.GuestHost != "server" || st.MigratingSince == "" {
		t.Fatalf("after kill -9 of migrate: lab status %+v, want the guest on the server and a migration under way", st)
	}
	if len(relayEnds()) == 0 {
		t.Fatal("after kill -9 of migrate no relay end carries its stream: it died with its client")
	}
}

// relayEnds are the lab's 'handoff relay-end' processes.
func relayEnds() []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == "relay-end" && slices.Contains(args, lab.RelayEndFlag(theLab.Dir)) {
			found = append(found, filepath.Dir(p))
		}
	}
	return found
}

// noRelayEndLeft waits for the lab's relay ends to go, as they do once the
// stream they carry has ended.
func noRelayEndLeft(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); len(relayEnds()) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("relay ends %v still run after the job they carried ended", relayEnds())
		}
	}
}

func TestAMigrationOutlivesItsClient(t *testing.T) {
	// Taken over, then Ctrl-C: the job is aborted, the guest stays home.
	startAndLose(t)
	cmd, sc, errOut := startHandoff(t, "migrate", "--lab", theLab.Dir)
	var said []string
	for sc.Scan() {
		said = append(said, sc.Text())
		if strings.Contains(sc.Text(), "pass") {
			break // a progress line: it drives the job now
		}
	}
	if len(said) == 0 || !strings.Contains(said[0], "is under way since") || !strings.Contains(said[0], "taking it over") {
		t.Fatalf("a second migrate said %q; want it to take over the job under way", said)
	}
	cmd.Process.Signal(syscall.SIGINT)
	for sc.Scan() {
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(errOut.String(), "aborted") || !strings.Contains(errOut.String(), "keeps running") {
		t.Fatalf("Ctrl-C of the take-over: %v, %q; want the job aborted and the VM running on the server", err, errOut.String())
	}
	if st := statusJSON(t); st.GuestHost != "server" || st.MigratingSince != "" || st.GuestIntegrity != "ok" {
		t.Fatalf("after aborting the job taken over: %+v", st)
	}
	noRelayEndLeft(t)

	// Taken over at a higher speed: it finishes, the guest in one place.
	startAndLose(t)
	tick := statusJSON(t).GuestTick
	r := handoff(t, "migrate", "--lab", theLab.Dir, "--max-speed", "1gbit")
	if r.Code != 0 || !strings.Contains(r.Stdout, "taking it over") || !strings.Contains(r.Stdout, "now runs on "+theLab.Workstation.URI) {
		t.Fatalf("take over and finish: exit %d\nstdout %s\nstderr %s", r.Code, r.Stdout, r.Stderr)
	}
	if err := theLab.WaitTick(context.Background(), tick+3, time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := statusJSON(t); st.GuestHost != "workstation" || st.GuestIntegrity != "ok" {
		t.Fatalf("after the job taken over finished: %+v", st)
	}
	noRelayEndLeft(t)
	// Home again, for the tests after this one.
	if r := handoff(t, "migrate", "--lab", theLab.Dir); r.Code != 0 {
		t.Fatalf("migrate back: exit %d: %s", r.Code, r.Stderr)
	}
}
