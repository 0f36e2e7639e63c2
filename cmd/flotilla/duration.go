package main

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// parseDuration is time.ParseDuration that also takes days, alone or
// before the rest: "30d", "1d12h".
func parseDuration(v string) (time.Duration, error) {
	m := daysPrefix.FindStringSubmatch(v)
	if m == nil {
		return time.ParseDuration(v)
	}
	days, err := strconv.ParseInt(m[1], 10, 32)
	if err != nil || days > 100_000 {
		return 0, fmt.Errorf("%q: too many days", v)
	}
	d := time.Duration(days) * 24 * time.Hour
	if m[2] == "" {
		return d, nil
	}
	rest, err := time.ParseDuration(m[2])
	if err != nil || rest < 0 {
		return 0, fmt.Errorf("%q is not a duration such as 90m, 24h or 30d", v)
	}
	return d + rest, nil
}

var daysPrefix = regexp.MustCompile(`^(\d+)d(.*)$`)

// durationFlag is a flag's duration that takes days too (parseDuration).
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	if d := *f.d; d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return f.d.String()
}

func (f durationFlag) Set(v string) error {
	d, err := parseDuration(v)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 90m, 24h or 30d", v)
	}
	*f.d = d
	return nil
}

func (durationFlag) Type() string { return "duration" }
