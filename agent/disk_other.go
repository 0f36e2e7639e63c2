//go:build !linux

package agent

import (
	"context"
	"errors"
	"time"
)

// mountDataDisk: mounting a data device is done on Linux only.
func mountDataDisk(context.Context, []string, string, time.Duration, func(string, ...any)) error {
	return errors.New("--data-device: mounting a data disk is supported on Linux only")
}
