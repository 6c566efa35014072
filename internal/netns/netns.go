// Package netns opens sockets inside a named network namespace (one 'ip
// netns add' made, under /run/netns) from a process that stays in its own.
//
// A socket belongs to the namespace it was made in for its whole life, so
// only its making has to happen in there: Do runs a function on an OS
// thread that enters the namespace and comes back, and Listen and Dial
// make their sockets that way. The lab's workstation-side code dials the
// lab server through Dial so that its traffic crosses the lab's shaped
// link, and the sync bench listens on the far side of its own link.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on a thread inside the namespace named ns and returns f's
// error. f must do its work on its own goroutine: a goroutine it starts
// runs on another thread, in this process's namespace.
//
// The thread must come back to this process's namespace: a thread that
// ended would take with it the commands it started (their parent-death
// signal is the thread's). Only if it cannot come back does it end,
// rather than serve other goroutines in there.
func Do(ns string, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		back, err := inside(ns, f)
		if back {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// inside is Do's work on its locked thread; back says whether the thread
// is in this process's namespace again.
func inside(ns string, f func() error) (back bool, _ error) {
	here, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return true, fmt.Errorf("find this thread's network namespace: %w", err)
	}
	defer here.Close()
	there, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return true, fmt.Errorf("network namespace %s: %w (is the lab up?)", ns, err)
	}
	defer there.Close()
	if err := unix.Setns(int(there.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("enter network namespace %s (needs root): %w", ns, err)
	}
	err = f()
	if serr := unix.Setns(int(here.Fd()), unix.CLONE_NEWNET); serr != nil {
		return false, fmt.Errorf("leave network namespace %s: %w", ns, serr)
	}
	return true, err
}

// Listen listens on addr inside the namespace ns.
func Listen(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(ns, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Dial connects to addr from inside the namespace ns; its signature is
// http.Transport's DialContext's. addr's host must be an IP address: a
// name would be looked up, and several addresses raced, on other threads,
// outside the namespace.
func Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, ns, err)
	}
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("dial %s in %s: give an IP address, not a name", addr, ns)
	}
	var c net.Conn
	err = Do(ns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
