package agent

import (
	"context"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// statsLoop measures data-disk usage and load every heartbeat interval,
// for the heartbeats to report, until ctx ends.
func (a *agent) statsLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		a.diskUsed.Store(diskUsage(a.cfg.DataDir))
		a.load1.Store(math.Float64bits(loadAverage()))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// diskUsage is the total size of the regular files under dir (symbolic
// links are not followed; unreadable parts are skipped).
func diskUsage(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}

// loadAverage is the one-minute load average from /proc/loadavg, or 0
// where there is none.
func loadAverage() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return v
}
