package lab

import "testing"

func TestParseTokenAdd(t *testing.T) {
	fp := "3f9a0c1d2e4b5a6978c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2"
	// As 'handoff serve token add' prints it.
	out := "token for workstation (shown only now): tok123\non that device run:\n  handoff lease login --server https://HOST:PORT --token tok123 --fingerprint " + fp + "\n"
	got, err := parseTokenAdd(out)
	if err != nil || got.Token != "tok123" || got.Fingerprint != fp {
		t.Errorf("parseTokenAdd = %+v, %v; want token tok123, fingerprint %s", got, err, fp)
	}
	for _, bad := range []string{"", "token for workstation: tok123\n", "--token tok --fingerprint short\n"} {
		if got, err := parseTokenAdd(bad); err == nil {
			t.Errorf("parseTokenAdd(%q) = %+v; want an error", bad, got)
		}
	}
}

func TestParseNetDev(t *testing.T) {
	// As Linux 6.1 prints /proc/net/dev.
	s := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3293      31    0    0    0     0          0         0     3293      31    0    0    0     0       0          0
  hws0: 4361829    3052    0    0    0     0          0         0   120446    1530    0    0    0     0       0          0
`
	got, err := parseNetDev(s, "hws0")
	if err != nil || got != (LinkCounts{Received: 4361829, Sent: 120446}) {
		t.Errorf("parseNetDev(hws0) = %+v, %v; want 4361829 received, 120446 sent", got, err)
	}
	if _, err := parseNetDev(s, "hws"); err == nil {
		t.Error("parseNetDev found hws, a prefix of hws0: want an error")
	}
	if _, err := parseNetDev("  hws0: 1 2 3\n", "hws0"); err == nil {
		t.Error("parseNetDev took a short line: want an error")
	}
}
