package relay

import "testing"

func TestChooseCompressesOnlyWhereItPays(t *testing.T) {
	const mb = 1e6
	for _, tc := range []struct {
		name string
		m    Measure
		want Mode
	}{
		{"nothing measured", Measure{}, Raw},
		{"incompressible pages", Measure{Ratio: 0.97, CompressRate: 400 * mb, LinkRate: 2.5 * mb}, Raw},
		{"home link, fast CPU: the densest level", Measure{Ratio: 0.45, CompressRate: 300 * mb, LinkRate: 2.5 * mb}, Dense},
		{"100 Mbit, a busy core: the fast level", Measure{Ratio: 0.45, CompressRate: 50 * mb, LinkRate: 12 * mb}, Fast},
		{"100 Mbit, a free core: the densest level", Measure{Ratio: 0.45, CompressRate: 300 * mb, LinkRate: 12 * mb}, Dense},
		{"gigabit on a busy core: passthrough", Measure{Ratio: 0.45, CompressRate: 100 * mb, LinkRate: 118 * mb}, Raw},
		{"gigabit, a compressor barely faster: passthrough", Measure{Ratio: 0.45, CompressRate: 130 * mb, LinkRate: 118 * mb}, Raw},
		{"gigabit, one free core's 165 MB/s: still passthrough", Measure{Ratio: 0.52, CompressRate: 165 * mb, LinkRate: 118 * mb}, Raw},
		{"gigabit, a compressor twice the link: the fast level", Measure{Ratio: 0.52, CompressRate: 300 * mb, LinkRate: 118 * mb}, Fast},
		{"link never full, compressor idle: save the bytes", Measure{Ratio: 0.45, CompressRate: 300 * mb, Busy: 0.2}, Fast},
		{"link never full, compressor the bottleneck: probe with passthrough", Measure{Ratio: 0.45, CompressRate: 90 * mb, Busy: 0.95}, Raw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := Choose(tc.m)
			if got != tc.want {
				t.Errorf("Choose(%+v) = %v (%s), want %v", tc.m, got, why, tc.want)
			}
			if why == "" {
				t.Error("no reason given")
			}
		})
	}
}

func TestQueueFollowsTheLink(t *testing.T) {
	for _, tc := range []struct {
		name          string
		rate          float64
		frame, unsent int
	}{
		{"not known yet: full sizes", 0, readSize, unsentOnLink},
		{"20 Mbit/s", 2.5e6, 50000, 25000},
		{"a modem", 10e3, minFrame, minUnsent},
		{"1 Gbit/s: full sizes fill it", 125e6, readSize, unsentOnLink},
	} {
		frame, unsent := queueFor(tc.rate)
		if frame != tc.frame || unsent != tc.unsent {
			t.Errorf("%s: queueFor(%v) = %d, %d; want %d, %d", tc.name, tc.rate, frame, unsent, tc.frame, tc.unsent)
		}
	}
}
