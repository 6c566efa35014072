package leasectl

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/testbin"
)

// TestReadOnlyCheckoutBranchAndUsageFromTheCLI drives 'handoff lease' as a
// person does, flags before or after the image, against a real server.
func TestReadOnlyCheckoutBranchAndUsageFromTheCLI(t *testing.T) {
	bin, cleanup, err := testbin.Binary()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	data := t.TempDir()
	srv := startServe(t, bin, data, "127.0.0.1:0")
	home := t.TempDir()
	handoff := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(cmd.Environ(), "XDG_CONFIG_HOME="+home)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// A second device gets its own token while the server runs.
	out, err := handoff("serve", "token", "add", "tablet", "--data", data)
	m := loginLine.FindStringSubmatch(out)
	if err != nil || m == nil || m[1] == srv.token || m[2] != srv.fp {
		t.Fatalf("serve token add: %v, %s", err, out)
	}
	// All three flags given, no login is needed.
	if out, err := handoff("lease", "status", "desktop", "--server", "https://"+srv.addr, "--token", m[1], "--fingerprint", srv.fp); err == nil || !strings.Contains(out, "no such image") {
		t.Fatalf("status with the server in flags, before login: %v, %s", err, out)
	}
	if out, err := handoff("lease", "login", "--server", "https://"+srv.addr, "--token", m[1], "--fingerprint", srv.fp); err != nil {
		t.Fatalf("login with the added token: %v, %s", err, out)
	}
	steps := []struct {
		args    []string
		fails   bool
		printed string
	}{
		{[]string{"create", "desktop"}, false, "create: done"},
		{[]string{"checkout", "desktop"}, true, "--read-only"},
		{[]string{"checkout", "--read-only", "desktop", "--json"}, false, `"head":""`},
		// Nothing happened since the checkout and no lease is out: accepted.
		{[]string{"commit", "desktop", "--holder", "reader", "--root", "r1"}, false, "epoch 0"},
		{[]string{"acquire", "desktop", "--holder", "laptop", "--ttl", "5m"}, false, "epoch 1"},
		// The reader's next commit builds on an old head: refused, and told how to keep it.
		{[]string{"commit", "desktop", "--holder", "reader", "--root", "r2"}, true, "handoff lease branch"},
		{[]string{"branch", "desktop", "--holder", "reader", "--root", "r2", "--new-image", "desktop-reader"}, false, "commit c"},
		{[]string{"status", "desktop-reader", "--json"}, false, `"branch_of":"desktop@"`},
		{[]string{"renew", "desktop", "--lease", "Lnothing"}, true, "stolen or released"},
		{[]string{"log", "desktop"}, false, "branch"},
		{[]string{"acquire"}, true, "takes one IMAGE"},
		{[]string{"fly", "desktop"}, true, "unknown lease command"},
		{[]string{"status", "nothere"}, true, "no such image"},
	}
	for _, s := range steps {
		out, err := handoff(append([]string{"lease"}, s.args...)...)
		if (err != nil) != s.fails || !strings.Contains(out, s.printed) {
			t.Fatalf("handoff lease %s: %v, %s; want failure=%v printing %q", strings.Join(s.args, " "), err, out, s.fails, s.printed)
		}
	}
}
