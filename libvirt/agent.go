package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The guest's agent (qemu-guest-agent), where the guest runs one.
//
// A checkpoint saves memory and disks at one instant, so a restore of both
// is whole whatever the guest had in its caches. What an agent adds is a
// disk that holds the guest's writes by itself: before the snapshot the
// guest writes its dirty pages out (sync), and, if asked, drops its clean
// caches. libvirt refuses VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE on a snapshot
// with memory (qemu_snapshot.c requires DISK_ONLY with it), and a freeze
// held across a live memory save would stall every writer in the guest
// for the whole save and be saved in the memory itself, so that the
// restored guest woke up frozen: handoff flushes, it does not freeze.

// ErrNoAgent means the guest runs no agent, or it does not answer.
var ErrNoAgent = errors.New("the guest's agent does not answer")

// agentTimeout bounds one call to the agent: a guest under TCG answers in
// well under a second; one without an agent makes libvirt wait this long.
const agentTimeout = 3

// agent sends one QMP-style command to the guest's agent and decodes its
// "return" into out (which may be nil).
func (d *Domain) agent(command string, args any, out any) error {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	res, err := d.conn.lv.QEMUDomainAgentCommand(d.dom, string(b), agentTimeout, 0)
	if err != nil {
		return fmt.Errorf("%s of %s on %s: %w (%w)", command, d.Name(), d.conn.uri, ErrNoAgent, err)
	}
	if out == nil || len(res) == 0 {
		return nil
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(res[0]), &reply); err != nil {
		return fmt.Errorf("%s of %s: the agent's answer %q: %w", command, d.Name(), res[0], err)
	}
	return json.Unmarshal(reply.Return, out)
}

// FlushGuest has the guest write its dirty pages to its disks (and, with
// dropCaches, drop its clean page cache) through its agent, and returns
// how long that took. A guest without an agent gets ErrNoAgent, and its
// checkpoints stay crash-consistent.
func (d *Domain) FlushGuest(ctx context.Context, dropCaches bool) (time.Duration, error) {
	start := time.Now()
	if err := d.agent("guest-ping", nil, nil); err != nil {
		return 0, err
	}
	script := "sync"
	if dropCaches {
		script += " && echo 1 > /proc/sys/vm/drop_caches"
	}
	var run struct {
		PID int `json:"pid"`
	}
	if err := d.agent("guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", script}}, &run); err != nil {
		return 0, err
	}
	for {
		var st struct {
			Exited   bool `json:"exited"`
			ExitCode int  `json:"exitcode"`
		}
		if err := d.agent("guest-exec-status", map[string]any{"pid": run.PID}, &st); err != nil {
			return 0, err
		}
		if st.Exited {
			if st.ExitCode != 0 {
				return time.Since(start), fmt.Errorf("flush %s: %q exited %d in the guest", d.Name(), script, st.ExitCode)
			}
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("flush %s: %q in the guest had not ended after %v: %w", d.Name(), script, time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
