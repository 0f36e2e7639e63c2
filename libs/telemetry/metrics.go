package telemetry

import (
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewMetricsServer returns the HTTP server of the Prometheus metrics
// endpoint, GET /metrics; serve it on the metrics port.
//
// With profiling it also serves Go's profiles at /debug/pprof/ (CPU, heap,
// goroutines, ...), for an operator finding where time or memory goes;
// they show code paths and sizes, never the values in memory.
func NewMetricsServer(profiling bool) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
	if profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
