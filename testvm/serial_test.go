package testvm

import (
	"strings"
	"testing"
)

func TestFormatTickParsesBack(t *testing.T) {
	for _, tick := range []Tick{
		{N: 1, Uptime: 2.5, DirtiedMB: 0},
		{N: 1234, Uptime: 1234.02, DirtiedMB: 98765, Problem: "page 17 has generation 3, want 4"},
	} {
		line := FormatTick(tick)
		wantWords := "integrity ok"
		if tick.Problem != "" {
			wantWords = "integrity FAIL"
		}
		if !strings.Contains(line, wantWords) {
			t.Errorf("FormatTick(%+v) = %q, want the literal words %q", tick, line, wantWords)
		}
		got, ok := parseTick(strings.TrimPrefix(line, linePrefix))
		if !ok || got != tick {
			t.Errorf("parseTick(FormatTick(%+v)) = %+v, %v", tick, got, ok)
		}
	}
}

func TestParseSerialLog(t *testing.T) {
	for _, tc := range []struct {
		name, log string
		want      Status
	}{
		{"empty", "", Status{}},
		{"kernel noise only", "[    0.000000] Linux version 6.1.0\nRun /init as init process\n", Status{}},
		{"ticks, last wins",
			"handoff-guest started\n" + FormatTick(Tick{N: 1, Uptime: 2.1, DirtiedMB: 1}) + "\n" + FormatTick(Tick{N: 2, Uptime: 3.1, DirtiedMB: 3}) + "\n",
			Status{Tick: 2, Uptime: 3.1, DirtiedMB: 3, Integrity: "ok"}},
		{"failure is reported with its reason",
			FormatTick(Tick{N: 1, Uptime: 2}) + "\n" + FormatTick(Tick{N: 2, Uptime: 3, Problem: "page 9 is torn or overwritten"}) + "\n",
			Status{Tick: 2, Uptime: 3, Integrity: "FAIL", Problem: "page 9 is torn or overwritten"}},
		{"keys gather in order, quoted bytes included",
			FormatKey([]byte("h")) + "\n" + FormatKey([]byte("i\r")) + "\n" + FormatKey([]byte("\x1b[A")) + "\n",
			Status{Keys: "hi\r\x1b[A"}},
		{"a line glued to kernel output still counts",
			"[ 3.2] random: crng init done" + FormatTick(Tick{N: 7, Uptime: 8}) + "\n",
			Status{Tick: 7, Uptime: 8, Integrity: "ok"}},
		{"a torn last line is passed over",
			FormatTick(Tick{N: 4, Uptime: 5}) + "\nhandoff-guest tick=5 upt",
			Status{Tick: 4, Uptime: 5, Integrity: "ok"}},
		{"a kernel oops is the guest's death",
			FormatTick(Tick{N: 4, Uptime: 5}) + "\n[   11.1] BUG: kernel NULL pointer dereference, address: 0\n[   11.2] Kernel panic - not syncing: Attempted to kill the idle task!\n",
			Status{Tick: 4, Uptime: 5, Integrity: "ok", Panic: "BUG: kernel NULL pointer dereference, address: 0"}},
		{"malformed numbers are passed over",
			"handoff-guest tick=x uptime=1 dirtied_mb=1 integrity ok\nhandoff-guest key=\"unterminated\n",
			Status{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSerialLog(strings.NewReader(tc.log))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("ParseSerialLog = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestKernelArgsRoundTrip(t *testing.T) {
	for _, p := range []Params{{}, {DirtyMBps: 2.5, WSSMB: 32}, {DirtyMBps: 40}} {
		args := p.KernelArgs()
		if !strings.Contains(args, "console=ttyS0") {
			t.Errorf("KernelArgs() = %q: the serial console must be ttyS0", args)
		}
		got, err := ParseKernelArgs("BOOT_IMAGE=/vmlinuz ro " + args)
		if err != nil {
			t.Fatalf("ParseKernelArgs(%q): %v", args, err)
		}
		if want := p.withDefaults(); got != want {
			t.Errorf("ParseKernelArgs(KernelArgs(%+v)) = %+v, want %+v", p, got, want)
		}
	}
}

func TestParseKernelArgsRefusesTypos(t *testing.T) {
	for _, cmdline := range []string{"handoff.dirty=fast", "handoff.wss=-1", "handoff.dirty=-2", "handoff.wss=1.5"} {
		if _, err := ParseKernelArgs(cmdline); err == nil || !strings.Contains(err.Error(), cmdline) {
			t.Errorf("ParseKernelArgs(%q) error = %v, want one naming the argument", cmdline, err)
		}
	}
}
