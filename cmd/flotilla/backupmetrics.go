package main

import (
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"flotilla.dev/flotilla/internal/stack"
)

// The metrics a backup writes into a node exporter's textfile directory
// (--textfile), by source (the data directory, or the cluster's NATS
// servers): for an alert on a backup that failed or is too old.
var backupGauges = []struct{ name, help string }{
	{"flotilla_backup_last_success_timestamp_seconds", "When the last whole backup ended (Unix time)."},
	{"flotilla_backup_last_duration_seconds", "How long the last whole backup took."},
	{"flotilla_backup_last_size_bytes", "The size of the last whole backup: its database and streams."},
	{"flotilla_backup_last_failure_timestamp_seconds", "When the last failed backup ended (Unix time); 0: none since the file was made."},
}

// writeBackupMetrics records a backup's outcome in file: on success when
// it ended, how long it took and its size; on failure when it failed, the
// figures of the last success kept as the file had them. The file is
// replaced whole (written aside, then renamed), so the exporter never
// reads half of it.
func writeBackupMetrics(file, source string, m *stack.BackupManifest, took time.Duration, failed bool, now time.Time) error {
	values := previousBackupMetrics(file, source)
	if failed {
		values["flotilla_backup_last_failure_timestamp_seconds"] = float64(now.Unix())
	} else {
		size := m.DatabaseBytes
		for _, s := range m.Streams {
			size += s.Bytes
		}
		values["flotilla_backup_last_success_timestamp_seconds"] = float64(now.Unix())
		values["flotilla_backup_last_duration_seconds"] = took.Seconds()
		values["flotilla_backup_last_size_bytes"] = float64(size)
	}
	reg := prometheus.NewRegistry()
	for _, g := range backupGauges {
		gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: g.name, Help: g.help, ConstLabels: prometheus.Labels{"source": source}})
		gauge.Set(values[g.name])
		if err := reg.Register(gauge); err != nil {
			return err
		}
	}
	return prometheus.WriteToTextfile(file, reg)
}

// previousBackupMetrics reads source's values from a textfile written
// before; none when there is none, or it cannot be read.
func previousBackupMetrics(file, source string) map[string]float64 {
	values := map[string]float64{}
	f, err := os.Open(file)
	if err != nil {
		return values
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(f)
	if err != nil {
		return values
	}
	for _, g := range backupGauges {
		fam, ok := families[g.name]
		if !ok {
			continue
		}
		for _, mt := range fam.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "source" && l.GetValue() == source {
					values[g.name] = mt.GetGauge().GetValue()
				}
			}
		}
	}
	return values
}
