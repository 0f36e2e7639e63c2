package agentgw

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The agent gateway's metrics, on the process's Prometheus registry (the
// metrics port's /metrics). Every gateway of a process counts into the same
// series: a process runs one, except in tests.
var metrics = struct {
	streams        prometheus.Gauge
	handshakes     *prometheus.CounterVec
	handshakeTime  prometheus.Histogram
	handshakeTurns prometheus.Histogram
}{
	streams: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "flotilla_agentgw_streams",
		Help: "Agent streams open on this process's agent gateway.",
	}),
	handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_agentgw_handshakes_total",
		Help: "TLS handshakes with agents by result: ok, busy (refused after waiting its longest for a turn), failed (anything else).",
	}, []string{"result"}),
	handshakeTime: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "flotilla_agentgw_handshake_seconds",
		Help:    "Time from a connection's accept to the end of its TLS handshake, whatever its result.",
		Buckets: handshakeBuckets,
	}),
	handshakeTurns: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "flotilla_agentgw_handshake_turn_wait_seconds",
		Help:    "Time a handshake waited for its turn, from its ClientHello (at most 256 are computed at once).",
		Buckets: handshakeBuckets,
	}),
}

// handshakeBuckets span a resumed handshake on an idle gateway (about a
// millisecond) to the longest wait for a turn and beyond.
var handshakeBuckets = []float64{.001, .005, .025, .1, .25, .5, 1, 2.5, 5, 10, 15, 30}

func init() {
	prometheus.MustRegister(metrics.streams, metrics.handshakes, metrics.handshakeTime, metrics.handshakeTurns)
}
