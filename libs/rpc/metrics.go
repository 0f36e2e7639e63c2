package rpc

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The services' metrics, on the process's Prometheus registry (the metrics
// port's /metrics). Every instance of a service in a process counts into
// the same series: a process runs one, except in tests.
var metrics = struct {
	steppedOut *prometheus.GaugeVec
	stepOuts   *prometheus.CounterVec
	untaken    *prometheus.CounterVec
}{
	steppedOut: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flotilla_rpc_stepped_out",
		Help: "1 while the service's instance in this process is out of its queue groups: not ready while another instance is.",
	}, []string{"service"}),
	stepOuts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_rpc_step_outs_total",
		Help: "Times the service's instance in this process stepped out of its queue groups.",
	}, []string{"service"}),
	untaken: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_rpc_calls_untaken_total",
		Help: "Calls from this process sent again because no instance of the service (the label) took them: none listened, or the one reached was reconnecting to the bus.",
	}, []string{"service"}),
}

// registerMetrics puts the services' metrics on the process's registry,
// once: only a process that runs a service with a readiness check shows
// them. registerClientMetrics does the same for the callers', once a
// process makes a Client.
var (
	registerMetrics       = sync.OnceFunc(func() { prometheus.MustRegister(metrics.steppedOut, metrics.stepOuts) })
	registerClientMetrics = sync.OnceFunc(func() { prometheus.MustRegister(metrics.untaken) })
)
