package main

import (
	"testing"
	"time"
)

// TestDurationsTakeDays: a duration flag or --since takes Go's units and
// days ("30d", "1d12h"); anything else is refused, saying what is meant.
func TestDurationsTakeDays(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]time.Duration{
		"90m": 90 * time.Minute, "24h": 24 * time.Hour, "30d": 30 * 24 * time.Hour, "1d12h": 36 * time.Hour,
		"365d": 365 * 24 * time.Hour, "0d": 0,
	} {
		if got, err := parseDuration(v); err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", v, got, err, want)
		}
	}
	for _, v := range []string{"d", "30", "3w", "1d-2h", "1dd", "99999999999d", "1.5d"} {
		if got, err := parseDuration(v); err == nil {
			t.Errorf("%q: %v, want an error", v, got)
		}
	}
	var d time.Duration
	f := durationFlag{&d}
	if err := f.Set("7d"); err != nil || d != 7*24*time.Hour || f.String() != "7d" {
		t.Errorf("Set 7d: %v %v %q", err, d, f.String())
	}
	if err := f.Set("soon"); err == nil || err.Error() != `"soon" is not a duration such as 90m, 24h or 30d` {
		t.Errorf("Set soon: %v", err)
	}
}
