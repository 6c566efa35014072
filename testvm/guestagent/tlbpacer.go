package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// echoFlag runs the agent as the pacer's partner: it sends back every byte.
const echoFlag = "-pacer-echo"

// tlbPeriod is how often the pacer switches address spaces.
const tlbPeriod = time.Millisecond

// startTLBPacer keeps QEMU 7.2's TCG TLB fresh while the guest migrates.
// QEMU before 9.0 (fixed by its commit 03bfc2188f, "physmem: Fix migration
// dirty bitmap coherency with TCG memory access") clears the migration's
// dirty bits without flushing the vCPU's TLB, so a store through an entry
// cached before the clear marks nothing and is never sent again: an idle
// guest, whose kernel writes its timers with no process switch for seconds,
// loses those writes and dies in timer code after the move. Every switch
// between two address spaces loads CR3, and TCG flushes its whole TLB on
// that; two processes bouncing a byte twice a millisecond bound how long a
// stale entry lives. Under KVM, or QEMU 9.0 and later, this changes nothing
// but a little CPU. The partner dies with the agent: its stdin closes.
func startTLBPacer() error {
	cmd := exec.Command("/proc/self/exe", echoFlag)
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the TLB pacer's partner: %w", err)
	}
	go func() {
		b := []byte{0}
		t := time.NewTicker(tlbPeriod)
		defer t.Stop()
		for range t.C {
			if _, err := in.Write(b); err != nil {
				return
			}
			if _, err := io.ReadFull(out, b); err != nil {
				return
			}
		}
	}()
	return nil
}

// echo is the pacer's partner: one byte in, the same byte out, until stdin
// closes.
func echo() {
	b := []byte{0}
	for {
		if _, err := os.Stdin.Read(b); err != nil {
			return
		}
		if _, err := os.Stdout.Write(b); err != nil {
			return
		}
	}
}
