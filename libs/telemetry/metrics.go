package telemetry

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewMetricsServer returns the HTTP server of the Prometheus metrics
// endpoint, GET /metrics; serve it on the metrics port.
func NewMetricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
