package agentsim

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/loadtest/apiclient"
)

// Limits on what one run may ask for.
const (
	MaxAgents       = 20000
	MaxDuration     = time.Hour
	MaxLogRate      = 100.0 // lines per second per agent
	MaxConcurrency  = 256
	MaxSetupTimeout = time.Hour
	// MaxLinesPerAgent is what the agent log stream keeps per instance by
	// default: more could not all be read back.
	MaxLinesPerAgent = bus.AgentLogDefaultLines
)

// Defaults of the optional settings.
const (
	DefaultHeartbeat    = 10 * time.Second
	DefaultConcurrency  = 16
	DefaultSetupTimeout = 10 * time.Minute
)

// Config is one run.
type Config struct {
	// API is Flotilla's base URL (loopback only), Token an operator's
	// bearer token.
	API   string
	Token string
	// Agents is how many agents to simulate (1..MaxAgents).
	Agents int
	// Duration is how long every agent, once all are connected and their
	// instances running, sends heartbeats and log lines (1s..MaxDuration).
	Duration time.Duration
	// LogRate is log lines per second per agent (0..MaxLogRate; at most
	// MaxLinesPerAgent lines per agent over Duration).
	LogRate float64
	// Heartbeat is the heartbeat interval (1s..5m; 0: DefaultHeartbeat).
	Heartbeat time.Duration
	// Network and Template name an existing network and template of
	// provider external to create the instances in; empty: agentsim
	// creates its own (and removes them unless Keep).
	Network, Template string
	// Keep leaves the instances (and network and template) in place.
	Keep bool
	// Concurrency bounds the API calls and joins in flight
	// (1..MaxConcurrency; 0: DefaultConcurrency).
	Concurrency int
	// Opening bounds how many agents of this process open a stream at
	// once: dial, TLS handshake, hello and first heartbeat (0..MaxAgents;
	// 0: no bound). Each real agent opens its stream on a machine of its own;
	// thousands simulated in one process on a few cores all handshake at
	// once, interleaved by the scheduler, and each takes seconds. A bound
	// lets the ones opening finish first, as a real agent would.
	Opening int
	// SetupTimeout bounds creating, provisioning and joining every agent
	// (0: DefaultSetupTimeout); the run goes on with the agents that made it.
	SetupTimeout time.Duration
	// Log gets progress; nil discards it.
	Log *slog.Logger
	// Steady, if set, is called once when every agent is connected and its
	// instance running, just before Duration starts (a test restarts the
	// agent gateway from it).
	Steady func()
}

// Validate reports every problem at once, naming the setting.
func (c Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.API); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("api: %q is not an http(s) URL", c.API))
	} else if err := apiclient.Loopback("api", u.Hostname()); err != nil {
		errs = append(errs, err)
	}
	if c.Token == "" {
		errs = append(errs, errors.New("token: an operator's bearer token is required (POST /api/v1/login)"))
	}
	if c.Agents < 1 || c.Agents > MaxAgents {
		errs = append(errs, fmt.Errorf("agents: %d must be between 1 and %d", c.Agents, MaxAgents))
	}
	if c.Duration < time.Second || c.Duration > MaxDuration {
		errs = append(errs, fmt.Errorf("duration: %v must be between 1s and %v", c.Duration, MaxDuration))
	}
	if c.LogRate < 0 || c.LogRate > MaxLogRate {
		errs = append(errs, fmt.Errorf("log-rate: %g must be between 0 and %g lines per second per agent", c.LogRate, MaxLogRate))
	} else if n := c.LogRate * c.Duration.Seconds(); n > MaxLinesPerAgent {
		errs = append(errs, fmt.Errorf("log-rate: %g lines/s for %v is %.0f lines per agent, more than the %d the agent log stream keeps per instance", c.LogRate, c.Duration, n, MaxLinesPerAgent))
	}
	if c.Heartbeat != 0 && (c.Heartbeat < time.Second || c.Heartbeat > 5*time.Minute) {
		errs = append(errs, fmt.Errorf("heartbeat: %v must be between 1s and 5m", c.Heartbeat))
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		errs = append(errs, fmt.Errorf("concurrency: %d must be between 1 and %d", c.Concurrency, MaxConcurrency))
	}
	if c.Opening < 0 || c.Opening > MaxAgents {
		errs = append(errs, fmt.Errorf("opening: %d must be between 0 (no bound) and %d", c.Opening, MaxAgents))
	}
	if c.SetupTimeout < 0 || c.SetupTimeout > MaxSetupTimeout {
		errs = append(errs, fmt.Errorf("setup-timeout: %v must be at most %v", c.SetupTimeout, MaxSetupTimeout))
	}
	if (c.Network == "") != (c.Template == "") {
		errs = append(errs, errors.New("network, template: name both (of provider external) or neither"))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.SetupTimeout == 0 {
		c.SetupTimeout = DefaultSetupTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Summary is what a run did, printed as one JSON line.
type Summary struct {
	// Agents is how many were asked for; Created how many instances were
	// made; Joined how many agents got a certificate; JoinFailures how many
	// could not (no token, refused join).
	Agents       int `json:"agents"`
	Created      int `json:"created"`
	Joined       int `json:"joined"`
	JoinFailures int `json:"joinFailures"`
	// Running is how many instances were running when the agents stopped;
	// Failed how many provisioning failed.
	Running int `json:"running"`
	Failed  int `json:"failed"`
	// Connected is how many agents had a stream when Duration ended.
	Connected int `json:"connected"`
	// Disconnects counts streams that broke; Outages the times not every
	// agent was connected; ReconnectSeconds is the longest time from the
	// first disconnect of an outage until every agent was connected again
	// (0 if none), and ReconnectedAll whether they all came back each time.
	Disconnects      int64   `json:"disconnects"`
	Outages          int     `json:"outages"`
	ReconnectSeconds float64 `json:"reconnectSeconds"`
	ReconnectedAll   bool    `json:"reconnectedAll"`
	// LinesSent counts distinct log lines (resent ones once);
	// LinesResent the resends after reconnects; LinesStored the lines the
	// logs API returns (an agent's read again 5 s later when some were
	// missing, and the first answer named in Errors); LinesUnread the
	// lines of agents whose lines could not be read back (the API
	// failing), which are neither stored nor lost.
	LinesSent      int64 `json:"linesSent"`
	LinesResent    int64 `json:"linesResent"`
	LinesStored    int64 `json:"linesStored"`
	LinesUnread    int64 `json:"linesUnread"`
	HeartbeatsSent int64 `json:"heartbeatsSent"`
	// SetupSeconds is from the first create until every agent was
	// connected and its instance running (or SetupTimeout);
	// DurationSeconds the time agents sent heartbeats and lines.
	SetupSeconds    float64 `json:"setupSeconds"`
	DurationSeconds float64 `json:"durationSeconds"`
	// LogRatePerAgent (lines/s) and HeartbeatSeconds are the rates asked.
	LogRatePerAgent  float64 `json:"logRatePerAgent"`
	HeartbeatSeconds float64 `json:"heartbeatSeconds"`
	// CleanedUp says whether everything created was removed.
	CleanedUp bool `json:"cleanedUp"`
	// Errors are the first few errors met.
	Errors []string `json:"errors,omitempty"`
	// StreamErrors counts why agents' streams failed to open or broke
	// while agents were meant to be connected, by error (the first
	// maxStreamErrors kinds; the rest under "other").
	StreamErrors map[string]int `json:"streamErrors,omitempty"`
}
