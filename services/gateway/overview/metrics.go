package overview

import (
	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/flotilla/api/vocab"
)

var (
	instancesDesc = prometheus.NewDesc("flotilla_fleet_instances",
		"Instances by state, as the gateway's fleet overview counts them (every state, 0 included).", []string{"state"}, nil)
	agentsExpectedDesc = prometheus.NewDesc("flotilla_fleet_agents_expected",
		"Instances with a VM, whose agent should be connected.", nil, nil)
	agentsConnectedDesc = prometheus.NewDesc("flotilla_fleet_agents_connected",
		"Instances with a VM whose agent has a stream to an agent gateway.", nil, nil)
	agentVersionsDesc = prometheus.NewDesc("flotilla_fleet_agent_versions",
		"Connected agents by the version they report (a version with none is left out): more than one, or one that is not the managers', means agents to upgrade.", []string{"version"}, nil)
	certificatesEndingDesc = prometheus.NewDesc("flotilla_fleet_certificates_ending",
		"Instances with a VM whose node certificate ends within the overview's window (FLOTILLA_CERTIFICATE_WARNING, 14 days by default), or has ended.", nil, nil)
)

// collector reports the fleet as an overview sees it at each scrape.
type collector struct{ of func() *Overview }

// Collector reports, at each scrape, the fleet as the overview of()
// returns sees it then: instances by state, agents expected and
// connected (and connected by version), certificates ending within
// CertificateWarning. It reports
// nothing while of() is nil or its overview is not ready (a gateway
// starting), so an alert never reads a count that is not yet true.
func Collector(of func() *Overview) prometheus.Collector { return collector{of: of} }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{instancesDesc, agentsExpectedDesc, agentsConnectedDesc, agentVersionsDesc, certificatesEndingDesc} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	o := c.of()
	if o == nil {
		return
	}
	s, err := o.Snapshot()
	if err != nil {
		return
	}
	for _, st := range vocab.States {
		if st != vocab.StateDeleted { // no record is left to count
			ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(s.States[string(st)]), string(st))
		}
	}
	ch <- prometheus.MustNewConstMetric(agentsExpectedDesc, prometheus.GaugeValue, float64(s.AgentsExpected))
	ch <- prometheus.MustNewConstMetric(agentsConnectedDesc, prometheus.GaugeValue, float64(s.AgentsConnected))
	for v, n := range s.AgentVersions {
		ch <- prometheus.MustNewConstMetric(agentVersionsDesc, prometheus.GaugeValue, float64(n), v)
	}
	ch <- prometheus.MustNewConstMetric(certificatesEndingDesc, prometheus.GaugeValue, float64(s.CertificatesEndingCount))
}
