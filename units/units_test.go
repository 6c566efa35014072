package units

import (
	"testing"
	"time"
)

func TestBytes(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0 B"}, {999, "999 B"}, {1000, "1 kB"}, {1499, "1 kB"}, {999_499, "999 kB"},
		{1_000_000, "1.0 MB"}, {108_349_999, "108.3 MB"}, {999_999_999, "1000.0 MB"},
		{1_000_000_000, "1.00 GB"}, {2_147_483_648, "2.15 GB"},
	}
	for _, tt := range tests {
		if got := Bytes(tt.in); got != tt.want {
			t.Errorf("Bytes(%d) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0 B/s"}, {999, "999 B/s"}, {1000, "1 kB/s"}, {2.4e6, "2.4 MB/s"},
		{125e6, "125.0 MB/s"}, {1e9, "1.0 GB/s"}, {1.25e9, "1.2 GB/s"},
	}
	for _, tt := range tests {
		if got := Rate(tt.in); got != tt.want {
			t.Errorf("Rate(%v) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestBitsPerSecond(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"20mbit", 20e6, false}, {"1gbit", 1e9, false}, {"100Mbit", 100e6, false}, {" 8mbit ", 8e6, false},
		{"500kbit", 500e3, false}, {"2.5mbps", 20e6, false}, {"64bit", 64, false}, {"1bps", 8, false},
		{"fast", 0, true}, {"0mbit", 0, true}, {"-5mbit", 0, true}, {"mbit", 0, true}, {"", 0, true},
	}
	for _, tt := range tests {
		got, err := BitsPerSecond(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("BitsPerSecond(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDowntime(t *testing.T) {
	if got := Downtime(4*time.Millisecond, true); got != "4 ms" {
		t.Errorf("Downtime(4ms, known) = %q; want 4 ms", got)
	}
	if got := Downtime(0, true); got != "0 ms" {
		t.Errorf("Downtime(0, known) = %q; want 0 ms: a pause too short to count is still one reported", got)
	}
	if got := Downtime(0, false); got != "not reported" {
		t.Errorf("Downtime(0, unknown) = %q; want not reported, never 0 ms", got)
	}
}
