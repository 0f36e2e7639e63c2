package agentgw

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The agent gateway's metrics, on the process's Prometheus registry (the
// metrics port's /metrics) once it runs a gateway. Every gateway of a process counts into the same
// series: a process runs one, except in tests.
var metrics = struct {
	streams        prometheus.Gauge
	handshakes     *prometheus.CounterVec
	handshakeTime  prometheus.Histogram
	handshakeTurns prometheus.Histogram
	checkTurns     prometheus.Histogram
	checkTime      prometheus.Histogram
	checkBatch     prometheus.Histogram
}{
	streams: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "flotilla_agentgw_streams",
		Help: "Agent streams open on this process's agent gateway.",
	}),
	handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_agentgw_handshakes_total",
		Help: "TLS handshakes with agents by result: ok, busy (refused after waiting its longest for a turn), failed (anything else).",
	}, []string{"result"}),
	handshakeTime: histogram("flotilla_agentgw_handshake_seconds",
		"Time from a connection's accept to the end of its TLS handshake, whatever its result."),
	handshakeTurns: histogram("flotilla_agentgw_handshake_turn_wait_seconds",
		"Time a handshake waited for its turn, from its ClientHello (at most 256 are computed at once)."),
	checkTurns: histogram("flotilla_agentgw_check_turn_wait_seconds",
		"Time a new stream's certificate check waited to join a batch to the CA (at most 4 batches of up to 256 in flight)."),
	checkTime: histogram("flotilla_agentgw_check_seconds",
		"Time the CA took to answer the batch of a new stream's certificate check, whatever its answer."),
	checkBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flotilla_agentgw_check_batch_size",
		Help: "Certificate checks in each batch the agent gateway sent the CA.", Buckets: []float64{1, 2, 4, 16, 64, 128, 256}}),
}

// handshakeBuckets span a resumed handshake or a check on an idle gateway
// (about a millisecond) to the longest wait for a turn and beyond.
var handshakeBuckets = []float64{.001, .005, .025, .1, .25, .5, 1, 2.5, 5, 10, 15, 30}

// histogram is a histogram of durations over handshakeBuckets.
func histogram(name, help string) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: handshakeBuckets})
}

// registerMetrics puts the metrics on the process's registry, once: only a
// process that runs an agent gateway shows them.
var registerMetrics = sync.OnceFunc(func() {
	prometheus.MustRegister(metrics.streams, metrics.handshakes, metrics.handshakeTime, metrics.handshakeTurns,
		metrics.checkTurns, metrics.checkTime, metrics.checkBatch)
})
