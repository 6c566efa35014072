package netns

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newNamespace makes a network namespace with its loopback up, removed
// when the test ends.
func newNamespace(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("network namespaces need root: run the tests as root (make test)")
	}
	ns := "hnt-" + strconv.Itoa(os.Getpid())
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			exec.Command("ip", "netns", "del", ns).Run()
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	return ns
}

// TestSocketsStayInTheirNamespace listens on the namespace's own loopback
// and dials it from in there, which works, and from here, which must not
// reach it: the two loopbacks are different networks.
func TestSocketsStayInTheirNamespace(t *testing.T) {
	ns := newNamespace(t)
	ln, err := Listen(ns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = io.WriteString(c, "from inside")
			c.Close()
		}
		served <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, ns, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "from inside" {
		t.Fatalf("read %q, %v; want %q", got, err, "from inside")
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}

	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("dialled %s from this namespace: the listener is not in %s", ln.Addr(), ns)
	}
	// The thread came back: a socket made here now is this namespace's.
	here, err := net.Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("listen here on the address the namespace uses: %v", err)
	}
	here.Close()
}

func TestDialRefusesNamesAndMissingNamespaces(t *testing.T) {
	ctx := t.Context()
	if _, err := Dial(ctx, "hnt-none", "tcp", "localhost:80"); err == nil || !strings.Contains(err.Error(), "IP address") {
		t.Errorf("dial by name: %v; want a refusal asking for an IP address", err)
	}
	if _, err := Dial(ctx, "hnt-none-"+strconv.Itoa(os.Getpid()), "tcp", "127.0.0.1:80"); err == nil || !strings.Contains(err.Error(), "hnt-none") {
		t.Errorf("dial in a missing namespace: %v; want an error naming it", err)
	}
}
