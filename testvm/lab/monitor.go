package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/handoff-dev/handoff/internal/netns"
)

// monitorSocket names the abstract unix socket on which a lab guest's QEMU
// takes QMP besides libvirt's monitor: libvirt holds its own domain's job
// lock through a migration ("cannot acquire state change lock (held by
// ...MigratePrepare3Params)"), so 'virsh qemu-monitor-command' cannot read
// the counters the bench wants while a move runs. An abstract socket lives
// in its network namespace: the source's and the destination's QEMU each
// have their own under the same name.
func monitorSocket(domain string) string { return "handoff-qmp-" + domain }

// QMP runs one QMP command on domain's QEMU on h, through the lab's own
// monitor, and decodes its "return" into out when it is given.
func QMP(ctx context.Context, h Host, domain, command string, out any) error {
	var c net.Conn
	err := netns.Do(h.Netns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "unix", "@"+monitorSocket(domain))
		return err
	})
	if err != nil {
		return fmt.Errorf("reach the QMP monitor of %s on %s: %w", domain, h.Name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	dec := json.NewDecoder(c)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("QMP greeting of %s on %s: %w", domain, h.Name, err)
	}
	for _, cmd := range []string{`{"execute":"qmp_capabilities"}`, command} {
		if _, err := c.Write([]byte(cmd + "\n")); err != nil {
			return fmt.Errorf("QMP %s on %s: %w", cmd, h.Name, err)
		}
		for {
			var reply struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Desc string `json:"desc"`
				} `json:"error"`
				Event string `json:"event"`
			}
			if err := dec.Decode(&reply); err != nil {
				return fmt.Errorf("QMP %s on %s: %w", cmd, h.Name, err)
			}
			if reply.Event != "" {
				continue
			}
			if reply.Error != nil {
				return fmt.Errorf("QMP %s on %s: %s", cmd, h.Name, reply.Error.Desc)
			}
			if cmd == command && out != nil {
				return json.Unmarshal(reply.Return, out)
			}
			break
		}
	}
	return nil
}
