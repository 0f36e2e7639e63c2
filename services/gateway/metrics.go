package gateway

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/flotilla/services/gateway/overview"
)

// The gateway's metrics, on the process's Prometheus registry once it
// runs a gateway. Every gateway of a process counts into the same series:
// a process runs one, except in tests.
var metrics = struct {
	lateAudits      prometheus.Gauge
	auditsUnwritten prometheus.Counter
}{
	lateAudits: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "flotilla_gateway_audit_records_late",
		Help: "API calls' audit records JetStream did not store within the call, waiting to be stored in the background.",
	}),
	auditsUnwritten: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "flotilla_gateway_audit_records_unwritten_total",
		Help: "API calls' audit records given up (logged, with all they hold, as \"audit record not written\").",
	}),
}

// fleet is the fleet overview of the process's gateway, the one made last
// (a process runs one, except in tests), reported at each scrape
// (overview.Collector: flotilla_fleet_*).
var fleet atomic.Pointer[overview.Overview]

// registerMetrics puts the metrics on the process's registry, once.
var registerMetrics = sync.OnceFunc(func() {
	prometheus.MustRegister(metrics.lateAudits, metrics.auditsUnwritten, overview.Collector(fleet.Load))
})
