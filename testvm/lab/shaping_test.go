package lab

import (
	"strings"
	"testing"
	"time"
)

func TestShapeCommands(t *testing.T) {
	tests := []struct {
		link  Link
		netem bool
		want  []string
	}{
		{Link{"20mbit", 40 * time.Millisecond}, false, []string{"qdisc replace dev d root handle 1: tbf rate 20mbit burst 32768 latency 50ms"}},
		{Link{"1gbit", 0}, true, []string{"qdisc replace dev d root handle 1: tbf rate 1gbit burst 500000 latency 50ms"}},
		{Link{"20mbit", 40 * time.Millisecond}, true, []string{
			"qdisc replace dev d root handle 1: netem delay 20000us limit 100000",
			"qdisc replace dev d parent 1:1 handle 10: tbf rate 20mbit burst 32768 latency 50ms"}},
	}
	for _, tt := range tests {
		cmds, err := ShapeCommands("d", tt.link, tt.netem)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range cmds {
			got = append(got, strings.Join(c, " "))
		}
		if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
			t.Errorf("ShapeCommands(%+v, netem %v) =\n%s\nwant\n%s", tt.link, tt.netem, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
		}
	}
	if _, err := ShapeCommands("x", Link{Bandwidth: "lots"}, true); err == nil {
		t.Fatal("ShapeCommands accepted a bad rate")
	}
}

func TestHostNamesDependOnTheLabDir(t *testing.T) {
	srv, ws := hosts(DefaultDir)
	if srv.User != "handoff-srv" || ws.Netns != "handoff-ws" || srv.Dev != "hsrv0" {
		t.Fatalf("default lab names = %+v %+v", srv, ws)
	}
	tsrv, tws := hosts("/run/handoff-lab-test")
	if tsrv.User == srv.User || tws.Netns == ws.Netns || tsrv.Dev == srv.Dev || tsrv.Dev == tws.Dev {
		t.Fatalf("a test lab shares names with the default one: %+v %+v", tsrv, tws)
	}
	for _, n := range []string{tsrv.Dev, tws.Dev} {
		if len(n) > 15 {
			t.Errorf("device name %q is longer than Linux allows (15)", n)
		}
	}
}
