package agentsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/loadtest/apiclient"
)

// pollInterval is how often the instances are listed while agents are set
// up and removed: every second, and a millisecond more per agent beyond a
// thousand, so listing them all stays a small part of the API's work.
func (s *sim) pollInterval() time.Duration {
	return max(time.Second, time.Duration(len(s.agents))*time.Millisecond)
}

// maxErrors is how many errors a Summary lists.
const maxErrors = 10

// Run simulates cfg.Agents agents (see the package documentation) and
// returns what happened. It returns an error only when the run cannot
// start (bad settings, no network or template); what goes wrong later is
// counted and listed in the Summary. When ctx ends early, the agents stop
// and what was created is still removed.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	if err := cfg.Validate(); err != nil {
		return Summary{}, err
	}
	cfg = cfg.withDefaults()
	// A connection per agent, and some to spare.
	if err := RaiseFileLimit(uint64(cfg.Agents) + 1024); err != nil {
		cfg.Log.Warn("not every agent may be able to connect", "error", err)
	}
	s := &sim{cfg: cfg, api: newAPI(cfg.API, cfg.Token), f: newFleet(cfg),
		sum: Summary{Agents: cfg.Agents, LogRatePerAgent: cfg.LogRate, HeartbeatSeconds: cfg.Heartbeat.Seconds()}}
	defer s.f.close()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	s.run = "agentsim-" + hex.EncodeToString(b)

	if err := s.placement(ctx); err != nil {
		return s.sum, err
	}
	setupStart := time.Now()
	s.create(ctx)
	stop := make(chan struct{})
	var agents sync.WaitGroup
	s.setUp(ctx, stop, &agents)
	s.sum.SetupSeconds = time.Since(setupStart).Seconds()

	if ctx.Err() == nil {
		s.steady(ctx)
	}
	s.sum.Connected = int(s.f.connected.Load())
	s.f.ending.Store(true)
	close(stop)
	agents.Wait() // each is bounded by finalTimeout

	// What is left is done even if ctx ended: it is bounded on its own.
	rest, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.SetupTimeout)
	defer cancel()
	s.countStored(rest)
	s.countStates(rest)
	if !cfg.Keep {
		s.cleanUp(rest)
	}
	s.f.mu.Lock()
	s.sum.Outages = s.f.outages
	s.sum.StreamErrors = s.f.streamErrors
	s.sum.ReconnectSeconds = s.f.longest.Seconds()
	s.sum.ReconnectedAll = s.f.outageStart.IsZero()
	s.f.mu.Unlock()
	s.sum.Joined = int(s.f.expected.Load())
	s.sum.JoinFailures = int(s.f.joinFails.Load())
	s.sum.Disconnects = s.f.disconnects.Load()
	s.sum.HeartbeatsSent = s.f.heartbeats.Load()
	s.sum.LinesResent = s.f.resent.Load()
	for _, a := range s.agents {
		s.sum.LinesSent += int64(a.highest.Load())
	}
	return s.sum, nil
}

// sim is one run.
type sim struct {
	cfg    Config
	api    *api
	f      *fleet
	run    string // names what this run creates
	netID  string
	tmplID string
	// ownPlacement says the network and template are this run's.
	ownPlacement bool
	agents       []*simAgent
	byID         map[string]*simAgent

	mu  sync.Mutex
	sum Summary
}

// fail records an error for the Summary.
func (s *sim) fail(err error) {
	s.cfg.Log.Warn("agentsim", "error", err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sum.Errors) < maxErrors {
		s.sum.Errors = append(s.sum.Errors, err.Error())
	}
}

// placement finds the named network and template (of provider external),
// or creates this run's own.
func (s *sim) placement(ctx context.Context) error {
	if s.cfg.Network == "" {
		var n, t resource
		err := s.api.Do(ctx, "POST", "/api/v1/networks", map[string]any{"name": s.run, "provider": vocab.ProviderExternal, "httpsStrategy": vocab.HTTPSNone}, &n)
		if err != nil {
			return fmt.Errorf("create a network: %w", err)
		}
		s.netID, s.ownPlacement = n.ID, true
		if err := s.api.Do(ctx, "POST", "/api/v1/templates", map[string]any{"name": s.run, "provider": vocab.ProviderExternal, "dataDiskGb": 1, "image": version}, &t); err != nil {
			return fmt.Errorf("create a template: %w", err)
		}
		s.tmplID = t.ID
		return nil
	}
	find := func(collection, name string) (string, error) {
		id := ""
		err := s.api.list(ctx, collection, func(r resource) {
			if r.Name == name && r.Provider == string(vocab.ProviderExternal) {
				id = r.ID
			}
		})
		if err == nil && id == "" {
			err = fmt.Errorf("no %s named %q of provider %q", collection[:len(collection)-1], name, vocab.ProviderExternal)
		}
		return id, err
	}
	var err error
	if s.netID, err = find("networks", s.cfg.Network); err != nil {
		return err
	}
	s.tmplID, err = find("templates", s.cfg.Template)
	return err
}

// parallel calls f for each agent, n at a time.
func (s *sim) parallel(ctx context.Context, n int, agents []*simAgent, f func(*simAgent)) {
	work := make(chan *simAgent)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for a := range work {
				f(a)
			}
		})
	}
	for _, a := range agents {
		select {
		case work <- a:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
}

// create makes and provisions an instance per agent.
func (s *sim) create(ctx context.Context) {
	all := make([]*simAgent, s.cfg.Agents)
	for i := range all {
		all[i] = &simAgent{f: s.f, name: fmt.Sprintf("%s-%d", s.run, i)}
	}
	s.parallel(ctx, s.cfg.Concurrency, all, func(a *simAgent) {
		var in resource
		err := s.api.Do(ctx, "POST", "/api/v1/instances", map[string]any{"name": a.name, "kind": "design", "templateId": s.tmplID, "networkId": s.netID}, &in)
		if err == nil {
			a.id = in.ID
			err = s.api.Do(ctx, "POST", "/api/v1/instances/"+url.PathEscape(in.ID)+":provision", map[string]any{}, nil)
		}
		if err != nil {
			a.failed = true
			s.fail(err)
		}
	})
	s.byID = map[string]*simAgent{}
	for _, a := range all {
		if a.id != "" {
			s.agents = append(s.agents, a)
			s.byID[a.id] = a
		}
	}
	s.sum.Created = len(s.agents)
	s.cfg.Log.Info("instances created and provisioning", "instances", len(s.agents))
}

// setUp mints a token for each instance once it waits for its agent, joins
// and starts the agent, until every agent is connected and its instance
// running (or failed), or SetupTimeout passes.
func (s *sim) setUp(ctx context.Context, stop <-chan struct{}, agents *sync.WaitGroup) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SetupTimeout)
	defer cancel()
	queue := make(chan *simAgent, len(s.agents))
	var joining sync.WaitGroup
	var pending atomic.Int64
	for range s.cfg.Concurrency {
		joining.Go(func() {
			for a := range queue {
				if err := s.mintAndJoin(ctx, a); err != nil {
					s.f.joinFails.Add(1)
					s.fail(fmt.Errorf("instance %s: %w", a.name, err))
				} else {
					s.f.expected.Add(1)
					a.joined.Store(true)
					agents.Go(func() { a.run(context.WithoutCancel(ctx), stop) })
				}
				pending.Add(-1)
			}
		})
	}
	defer func() {
		close(queue)
		joining.Wait()
	}()
	for {
		states := map[vocab.State]int{}
		err := s.api.list(ctx, "instances", func(r resource) {
			a := s.byID[r.ID]
			if a == nil {
				return
			}
			st := vocab.State(r.State)
			states[st]++
			a.running.Store(st == vocab.StateRunning)
			a.failed = st == vocab.StateFailed
			step := vocab.Step(r.StateDetail)
			if !a.minted && st == vocab.StateProvisioning && r.VMID != "" && (step == vocab.StepWaitingForAgent || step == vocab.StepLaunchingVM) {
				a.minted = true
				pending.Add(1)
				queue <- a
			}
		})
		if err != nil && ctx.Err() == nil {
			s.fail(fmt.Errorf("list instances: %w", err))
		}
		settled := pending.Load() == 0
		for _, a := range s.agents {
			if !a.failed && (!a.minted || (a.joined.Load() && !a.running.Load())) {
				settled = false
				break
			}
		}
		if settled && s.f.connected.Load() >= s.f.expected.Load() {
			s.cfg.Log.Info("every agent is set up", "joined", s.f.expected.Load(), "failed", states[vocab.StateFailed])
			return
		}
		s.cfg.Log.Info("setting up", "states", states, "joined", s.f.expected.Load(), "connected", s.f.connected.Load())
		select {
		case <-ctx.Done():
			s.fail(fmt.Errorf("setup: not every agent was connected and running within %v", s.cfg.SetupTimeout))
			return
		case <-time.After(s.pollInterval()):
		}
	}
}

// mintAndJoin mints the instance's join token through the API and joins.
func (s *sim) mintAndJoin(ctx context.Context, a *simAgent) error {
	var tok joinToken
	if err := s.api.Do(ctx, "POST", "/api/v1/instances/"+url.PathEscape(a.id)+":joinToken", map[string]any{}, &tok); err != nil {
		return err
	}
	return a.join(ctx, tok)
}

// steady lets the agents send heartbeats and lines for Duration.
func (s *sim) steady(ctx context.Context) {
	if s.cfg.Steady != nil {
		s.cfg.Steady()
	}
	start := time.Now()
	s.f.logStart, s.f.logEnd = start, start.Add(s.cfg.Duration)
	s.f.steady.Store(true)
	s.cfg.Log.Info("agents connected; sending heartbeats and lines", "connected", s.f.connected.Load(), "duration", s.cfg.Duration)
	end := time.After(s.cfg.Duration)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-end:
			break wait
		case <-tick.C:
			// While not every agent is connected, say how many are,
			// every second.
			if n, want := s.f.connected.Load(), s.f.expected.Load(); n < want {
				s.cfg.Log.Info("agents reconnecting", "connected", n, "of", want, "since", time.Since(start).Round(time.Second))
			}
		}
	}
	s.sum.DurationSeconds = time.Since(start).Seconds()
}

// countStored reads back, through the logs API, each agent's lines. A
// read takes a while even for a few lines (the API waits up to 2 s for a
// batch), so several go at once; one the API cannot answer now is tried
// again, and the lines of one that never succeeds are counted as unread,
// not as lost.
func (s *sim) countStored(ctx context.Context) {
	var stored, unread atomic.Int64
	s.parallel(ctx, min(MaxConcurrency, 4*s.cfg.Concurrency), s.agents, func(a *simAgent) {
		want := int(min(a.highest.Load(), MaxLinesPerAgent))
		wait := time.Second
		for attempt := 1; ; attempt++ {
			n, missing, err := s.api.storedLines(ctx, a.id, want)
			if err == nil && len(missing) > 0 {
				// Read again a moment later: a line the API did not
				// return at first but does then was stored all along.
				time.Sleep(5 * time.Second)
				again, missingAgain, errAgain := s.api.storedLines(ctx, a.id, want)
				s.fail(fmt.Errorf("%s: the API returned %d of its %d lines (missing %v), and %d (missing %v, %v) 5 s later", a.name, n, want, missing, again, missingAgain, errAgain))
				if errAgain == nil {
					n = max(n, again)
				}
			}
			if err == nil {
				stored.Add(n)
				return
			}
			if st := apiclient.StatusOf(err); (st != 0 && st != 429 && st < 500) || attempt == 5 || ctx.Err() != nil {
				s.fail(fmt.Errorf("read the lines of %s: %w", a.name, err))
				unread.Add(int64(want))
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait *= 2
		}
	})
	s.sum.LinesStored, s.sum.LinesUnread = stored.Load(), unread.Load()
}

// countStates counts the instances running and failed.
func (s *sim) countStates(ctx context.Context) {
	err := s.api.list(ctx, "instances", func(r resource) {
		if s.byID[r.ID] == nil {
			return
		}
		switch vocab.State(r.State) {
		case vocab.StateRunning:
			s.sum.Running++
		case vocab.StateFailed:
			s.sum.Failed++
		}
	})
	if err != nil {
		s.fail(fmt.Errorf("list instances: %w", err))
	}
}

// cleanUp deprovisions and deletes every instance of the run, then its own
// network and template.
func (s *sim) cleanUp(ctx context.Context) {
	s.cfg.Log.Info("removing what the run created", "instances", len(s.agents))
	for {
		var deprovision, remove []*simAgent
		left := 0
		err := s.api.list(ctx, "instances", func(r resource) {
			a := s.byID[r.ID]
			if a == nil {
				return
			}
			left++
			switch vocab.State(r.State) {
			case vocab.StateRunning:
				deprovision = append(deprovision, a)
			case vocab.StateCreated, vocab.StateDeprovisioned, vocab.StateFailed:
				remove = append(remove, a)
			}
		})
		if err == nil && left == 0 {
			break
		}
		if err != nil {
			s.fail(fmt.Errorf("clean up: list instances: %w", err))
		}
		act := func(method, action string) func(*simAgent) {
			return func(a *simAgent) {
				err := s.api.Do(ctx, method, "/api/v1/instances/"+url.PathEscape(a.id)+action, nil, nil)
				if err != nil && apiclient.StatusOf(err) != 404 && apiclient.StatusOf(err) != 409 {
					s.fail(fmt.Errorf("clean up %s: %w", a.name, err))
				}
			}
		}
		s.parallel(ctx, s.cfg.Concurrency, deprovision, act("POST", ":deprovision"))
		s.parallel(ctx, s.cfg.Concurrency, remove, act("DELETE", ""))
		select {
		case <-ctx.Done():
			s.fail(fmt.Errorf("clean up: instances of %s left after %v", s.run, s.cfg.SetupTimeout))
			return
		case <-time.After(s.pollInterval()):
		}
	}
	if s.ownPlacement {
		for _, p := range []string{"/api/v1/templates/" + s.tmplID, "/api/v1/networks/" + s.netID} {
			if err := s.api.Do(ctx, "DELETE", p, nil, nil); err != nil {
				s.fail(fmt.Errorf("clean up: %w", err))
				return
			}
		}
	}
	s.sum.CleanedUp = true
}
