package agentsim_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/loadtest/agentsim"
	"flotilla.dev/flotilla/services/inventory"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(childAgentsEnv); spec != "" {
		os.Exit(runChildAgents(spec))
	}
	testkit.Main(m)
}

// Twenty simulated agents join through real tokens, the real CA and a real
// agent gateway, their instances reach running, and when the agent gateway
// restarts mid-run they all come back and no line they sent is lost; then
// everything they created is gone.
func TestAgentsJoinRunAndSurviveAGatewayRestart(t *testing.T) {
	api, token, gw := startFleetManager(t)

	restarted := make(chan struct{})
	var restartErr error
	cfg := agentsim.Config{
		API: api, Token: token, Agents: 20, Duration: 8 * time.Second, LogRate: 5,
		Heartbeat: time.Second, Concurrency: 8, SetupTimeout: 2 * time.Minute,
		Opening: 4, // at most four open their stream at once
		Log:     slog.New(slog.NewTextHandler(t.Output(), nil)),
		Steady: func() {
			go func() {
				defer close(restarted)
				time.Sleep(1500 * time.Millisecond)
				gw, restartErr = gw.restart(t)
			}()
		},
	}
	sum, err := agentsim.Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	<-restarted
	if restartErr != nil {
		t.Fatal(restartErr)
	}
	out, _ := json.Marshal(sum)
	t.Logf("summary: %s", out)
	want := int64(20 * 5 * 8) // agents × lines/s × s
	if sum.Created != 20 || sum.Joined != 20 || sum.JoinFailures != 0 || sum.Connected != 20 || sum.Running != 20 || sum.Failed != 0 {
		t.Errorf("not every agent made it: %s", out)
	}
	if sum.LinesSent != want || sum.LinesStored != sum.LinesSent {
		t.Errorf("lines sent %d, stored %d; want %d and %d", sum.LinesSent, sum.LinesStored, want, want)
	}
	if sum.Outages < 1 || sum.Disconnects < 20 || sum.ReconnectSeconds <= 0 || !sum.ReconnectedAll {
		t.Errorf("the gateway restart does not show as an outage every agent came back from: %s", out)
	}
	if sum.HeartbeatsSent < 20*8 || !sum.CleanedUp || len(sum.Errors) > 0 {
		t.Errorf("summary: %s", out)
	}
}

// BenchmarkAgentGatewayRestart measures what the goal of "Fast and at
// scale" names: FLOTILLA_BENCH_AGENTS simulated agents (default 200)
// connected to one agent gateway, heartbeats every 10 s and a line every
// 10 s each; 20 s into the steady phase the agent gateway alone stops
// (SIGTERM's way) and starts again on the same address while the other
// services run on. It reports the longest outage as the agents see it
// (first stream lost → every agent connected again, reconnect-s), the time
// until the gateway had every stream checked and registered again
// (registered-s: only then can it reach every agent), and the lines lost
// (sent, not stored); and what the services hold per agent in the steady
// phase (heap, goroutines and their stacks) and what they used, allocated
// and collected in the 30 s after the restart. Each second after the
// restart it prints what the gateway's metrics say (streams, handshakes
// and their times).
//
//	FLOTILLA_BENCH_AGENTS=10000 go test -run '^$' -bench AgentGatewayRestart -benchtime 1x -timeout 1h ./loadtest/agentsim/
func BenchmarkAgentGatewayRestart(b *testing.B) {
	agents := 200
	if v := os.Getenv("FLOTILLA_BENCH_AGENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > agentsim.MaxAgents {
			b.Fatalf("FLOTILLA_BENCH_AGENTS=%q: want 1 to %d", v, agentsim.MaxAgents)
		}
		agents = n
	}
	if err := agentsim.RaiseFileLimit(uint64(agents) + 4096); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		api, token, gw := startFleetManager(b)
		restarted := make(chan error, 1)
		var heapPerAgent, stackPerAgent, goroutinesPerAgent, steadyCores, servicesCores, agentsCores, allocPerAgent, gcCycles float64
		registered := make(chan float64, 1)
		heapBefore := heapInUse()
		stacksBefore, goroutinesBefore := memStats().StackInuse, runtime.NumGoroutine()
		sum, err := runAgentsApart(b, api, token, agents, func(agentsPID int) {
			// The steady phase's first 20 s: what every service but the
			// agents costs while they heartbeat and log.
			steady, steadyAt := cpuSeconds(os.Getpid()), time.Now()
			stopSteadyProfile := profileCPU(b, "FLOTILLA_BENCH_STEADY_CPUPROFILE", 20*time.Second)
			time.Sleep(20 * time.Second)
			stopSteadyProfile()
			steadyCores = (cpuSeconds(os.Getpid()) - steady) / time.Since(steadyAt).Seconds()
			heapPerAgent = (float64(heapInUse()) - float64(heapBefore)) / float64(agents)
			stackPerAgent = (float64(memStats().StackInuse) - float64(stacksBefore)) / float64(agents)
			goroutinesPerAgent = float64(runtime.NumGoroutine()-goroutinesBefore) / float64(agents)
			profileHeap(b, "")
			allocs := memStats()
			stopProfile := profileCPU(b, "FLOTILLA_BENCH_CPUPROFILE", 30*time.Second)
			services, agentsCPU, t0 := cpuSeconds(os.Getpid()), cpuSeconds(agentsPID), time.Now()
			go traceGateway(t0, 30*time.Second)
			go func() { registered <- streamsBack(t0, agents, 39*time.Second) }()
			var err error
			gw, err = gw.restart(b)
			// What each process used while the agents came back: on this
			// machine they share its cores.
			time.Sleep(time.Until(t0.Add(30 * time.Second)))
			elapsed := time.Since(t0).Seconds()
			servicesCores = (cpuSeconds(os.Getpid()) - services) / elapsed
			agentsCores = (cpuSeconds(agentsPID) - agentsCPU) / elapsed
			after := memStats()
			allocPerAgent = float64(after.TotalAlloc-allocs.TotalAlloc) / float64(agents)
			gcCycles = float64(after.NumGC - allocs.NumGC)
			profileHeap(b, ".after")
			stopProfile()
			restarted <- err
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := <-restarted; err != nil {
			b.Fatal(err)
		}
		out, _ := json.Marshal(sum)
		b.Logf("summary: %s", out)
		if !sum.ReconnectedAll || sum.Outages < 1 {
			b.Errorf("not every agent came back: %s", out)
		}
		b.ReportMetric(float64(sum.Agents), "agents")
		b.ReportMetric(sum.ReconnectSeconds, "reconnect-s")
		b.ReportMetric(<-registered, "registered-s")
		b.ReportMetric(float64(sum.LinesSent-sum.LinesStored-sum.LinesUnread), "lines-lost")
		b.ReportMetric(sum.SetupSeconds, "setup-s")
		b.ReportMetric(heapPerAgent/1024, "services-heap-KB/agent")
		b.ReportMetric(stackPerAgent/1024, "services-stacks-KB/agent")
		b.ReportMetric(goroutinesPerAgent, "services-goroutines/agent")
		b.ReportMetric(steadyCores, "services-cores-steady")
		b.ReportMetric(servicesCores, "services-cores-after-restart")
		b.ReportMetric(agentsCores, "agents-cores-after-restart")
		b.ReportMetric(allocPerAgent/1024, "services-alloc-KB/agent-after-restart")
		b.ReportMetric(gcCycles, "services-gcs-after-restart")
	}
}

// profileCPU profiles this process for up to d into the file the
// environment variable env names, if it names one; the returned function
// waits until it is written. In the benchmark's process that is every
// service; in the agents' process, the agents.
func profileCPU(tb testing.TB, env string, d time.Duration) func() {
	path := os.Getenv(env)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		if tb != nil {
			tb.Error(err)
		} else {
			fmt.Fprintf(os.Stderr, "%s: %v\n", env, err)
		}
		return func() {}
	}
	done := time.After(d)
	return func() {
		<-done
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

// heapInUse is this process's heap in use (every service's) after a
// collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// memStats is this process's memory statistics, without a collection.
func memStats() runtime.MemStats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// profileHeap writes a heap profile of this process into the file
// FLOTILLA_BENCH_HEAPPROFILE names with suffix appended, if it names one:
// the profile before the restart and the one after (".after") tell, by
// their allocations' difference, what the restart allocated.
func profileHeap(b *testing.B, suffix string) {
	path := os.Getenv("FLOTILLA_BENCH_HEAPPROFILE")
	if path == "" {
		return
	}
	path += suffix
	f, err := os.Create(path)
	if err == nil {
		err = pprof.WriteHeapProfile(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		b.Error(err)
	}
}

// cpuSeconds is the CPU time process pid has used so far (user and
// system), or 0 if it cannot be read.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// After the command name in parentheses: state is field 3, utime 14
	// and stime 15, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// The benchmark's agents run in a process of their own, this test binary
// started again with childAgentsEnv set: each connection has an end in the
// agents' process and one in the agent gateway's, and 10 000 of each do not
// fit under one process's open-file limit on every machine.
const (
	childAgentsEnv = "FLOTILLA_AGENTSIM_CHILD" // "API TOKEN AGENTS"
	// steadyMark is the line the agents' process prints on stderr when
	// every agent is connected and the steady phase begins.
	steadyMark = "agentsim-child: steady"
	// childGOGC is the agents' process's GOGC.
	childGOGC = "400"
)

// benchConfig is the benchmark's run: heartbeats every 10 s, a line every
// 10 s per agent, a minute of steady phase; FLOTILLA_BENCH_OPENING, if
// set, bounds the agents opening their stream at once (Config.Opening).
func benchConfig(api, token string, agents int) agentsim.Config {
	opening := 0
	if v := os.Getenv("FLOTILLA_BENCH_OPENING"); v != "" {
		var err error
		if opening, err = strconv.Atoi(v); err != nil {
			opening = -1 // refused, naming the setting
		}
	}
	return agentsim.Config{
		API: api, Token: token, Agents: agents, Duration: 60 * time.Second,
		LogRate: 0.1, Heartbeat: 10 * time.Second, Concurrency: 64, SetupTimeout: time.Hour,
		Opening: opening,
		// Its progress goes to stderr: a run of thousands takes minutes.
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
}

// runAgentsApart runs the agents in a child process and calls steady (in a
// goroutine of its own) when their steady phase begins; it returns their
// summary.
func runAgentsApart(b *testing.B, api, token string, agents int, steady func(agentsPID int)) (agentsim.Summary, error) {
	cmd := exec.CommandContext(b.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", childAgentsEnv, api, token, agents),
		// Thousands of agents in one process collect garbage together, on
		// the cores the services under test use (a quarter of the agents'
		// CPU time at GOGC=100): where each agent has a machine of its
		// own, that time is not taken from them. A larger heap lets the
		// agents' process collect less often.
		"GOGC="+childGOGC)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return agentsim.Summary{}, err
	}
	if err := cmd.Start(); err != nil {
		return agentsim.Summary{}, fmt.Errorf("start the agents' process: %w", err)
	}
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		if lines.Text() == steadyMark {
			go steady(cmd.Process.Pid)
			continue
		}
		fmt.Fprintln(os.Stderr, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		return agentsim.Summary{}, fmt.Errorf("the agents' process: %w", err)
	}
	var sum agentsim.Summary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		return sum, fmt.Errorf("the agents' summary %q: %w", stdout.String(), err)
	}
	return sum, nil
}

// runChildAgents is the agents' process: it runs the benchmark's agents
// against the API and token childAgentsEnv names and prints their summary
// on stdout.
func runChildAgents(spec string) int {
	var api, token string
	var agents int
	if _, err := fmt.Sscanf(spec, "%s %s %d", &api, &token, &agents); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", childAgentsEnv, spec, err)
		return 2
	}
	cfg := benchConfig(api, token, agents)
	cfg.Steady = func() {
		fmt.Fprintln(os.Stderr, steadyMark)
		// The agents' side of the restart: the benchmark stops the
		// gateway 20 s into the steady phase and profiles the services
		// for the 30 s after.
		go func() {
			time.Sleep(20 * time.Second)
			profileCPU(nil, "FLOTILLA_BENCH_AGENTS_CPUPROFILE", 30*time.Second)()
		}()
	}
	sum, err := agentsim.Run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(sum); err != nil {
		return 1
	}
	return 0
}

// Settings out of bounds are refused before anything is created, each
// naming its setting; so is a target that is not this machine.
func TestBadSettingsAreRefused(t *testing.T) {
	t.Parallel()
	_, err := agentsim.Run(t.Context(), agentsim.Config{API: "http://192.0.2.1:7700", Agents: 0, Duration: 2 * time.Hour,
		LogRate: 100, Heartbeat: time.Millisecond, Network: "n", Opening: -1})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"api: \"192.0.2.1\" is not this machine", "token: ", "agents: 0", "duration: 2h0m0s", "log-rate: 100 lines/s for 2h0m0s",
		"heartbeat: 1ms", "opening: -1", "network, template: "} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// startFleetManager starts every service but the agent gateway on one
// bus, and the agent gateway apart (so it can be restarted alone); it
// returns the API's base URL, an admin's token and the agent gateway.
func startFleetManager(tb testing.TB) (api, token string, gw *agentGateway) {
	tb.Helper()
	bus := testkit.SecureNATS(tb)
	agentAddr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(tb))
	dbURL := testkit.NewDatabase(tb)
	st := stacktest.Start(tb, stacktest.OnBus(stack.Config{DatabaseURL: dbURL, AgentGatewayAddr: agentAddr,
		Services: []string{subjects.Inventory, subjects.CA, subjects.Secrets, subjects.Provisioner, subjects.Gateway}}, bus))
	// The gateway's own log says where its stop spends its time.
	stopLog := &lastLine{match: []byte("agent gateway stopped")}
	gw, err := startAgentGateway(tb, stacktest.OnBus(stack.Config{Services: []string{subjects.AgentGW}, AgentAddr: agentAddr,
		Log: slog.New(slog.NewTextHandler(stopLog, nil))}, bus))
	if err != nil {
		tb.Fatal(err)
	}
	gw.stopLog = stopLog
	return "http://" + st.HTTPAddr, adminToken(tb, dbURL, st.HTTPAddr), gw
}

// lastLine keeps the last log line written to it that holds match.
type lastLine struct {
	match []byte
	mu    sync.Mutex
	line  string
}

func (l *lastLine) Write(p []byte) (int, error) {
	if bytes.Contains(p, l.match) {
		l.mu.Lock()
		l.line = string(p)
		l.mu.Unlock()
	}
	return len(p), nil
}

func (l *lastLine) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.line
}

// agentGateway is an agent gateway the test stops and starts again.
type agentGateway struct {
	cfg    stack.Config
	cancel context.CancelFunc
	done   chan error
	// stopLog, when set, has the gateway's account of its last stop.
	stopLog *lastLine
}

func startAgentGateway(t testing.TB, cfg stack.Config) (*agentGateway, error) {
	st, err := stack.Start(t.Context(), cfg)
	if err != nil {
		return nil, fmt.Errorf("start the agent gateway: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &agentGateway{cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- st.Run(ctx) }()
	t.Cleanup(g.stop)
	return g, nil
}

func (g *agentGateway) stop() {
	if g.cancel != nil {
		g.cancel()
		<-g.done
		g.cancel = nil
	}
}

// restart stops the gateway (every agent's stream ends) and starts a new
// one on the same address.
func (g *agentGateway) restart(t testing.TB) (*agentGateway, error) {
	t0 := time.Now()
	g.stop()
	t1 := time.Now()
	ng, err := startAgentGateway(t, g.cfg)
	if ng != nil {
		ng.stopLog = g.stopLog
	}
	fmt.Fprintf(os.Stderr, "the agent gateway stopped in %v and started in %v\n", t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	if g.stopLog != nil {
		fmt.Fprintf(os.Stderr, "its log: %s", g.stopLog.last())
	}
	return ng, err
}

// adminToken sets up the first admin and logs in.
func adminToken(t testing.TB, dbURL, httpAddr string) string {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := inventory.InitialSetup(t.Context(), pool, nil, "admin", "S3cret-pass"); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"username": "admin", "password": "S3cret-pass"})
	resp, err := http.Post("http://"+httpAddr+"/api/v1/login", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var login struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&login); err != nil || login.Token == "" {
		t.Fatalf("login: %d %v", resp.StatusCode, err)
	}
	return login.Token
}

// streamsBack is how long after t0 the agent gateway had every agent's
// stream registered again (flotilla_agentgw_streams back at n), or -1 if
// it had not within d. An agent counts itself connected once it has sent
// its hello; the gateway can reach it (commands, the inventory's
// "connected") only once it has checked the agent's certificate with the
// CA and registered the stream, which is what this measures.
func streamsBack(t0 time.Time, n int, d time.Duration) float64 {
	left := false
	for time.Since(t0) < d {
		switch streams := gatewayMetrics()["flotilla_agentgw_streams"]; {
		case streams < float64(n):
			left = true
		case left:
			return time.Since(t0).Seconds()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1
}

// traceGateway prints, every second for d from t0, what the agent
// gateway's metrics say happened in that second: its open streams, the
// handshakes that ended (ok, busy, failed) and their mean time from accept
// and mean wait for a turn, and the CA's certificate checks answered, their
// mean time and mean wait for a turn.
func traceGateway(t0 time.Time, d time.Duration) {
	prev := gatewayMetrics()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(t0) < d {
		<-tick.C
		cur := gatewayMetrics()
		mean := func(sum, count string) float64 {
			if n := cur[count] - prev[count]; n > 0 {
				return (cur[sum] - prev[sum]) / n
			}
			return 0
		}
		fmt.Fprintf(os.Stderr, "gateway t=%.0fs streams=%.0f handshakes ok=%.0f busy=%.0f failed=%.0f mean=%.3fs turn-wait=%.3fs checks=%.0f mean=%.3fs turn-wait=%.3fs\n",
			time.Since(t0).Seconds(), cur["flotilla_agentgw_streams"],
			cur[handshakes+"ok"]-prev[handshakes+"ok"], cur[handshakes+"busy"]-prev[handshakes+"busy"], cur[handshakes+"failed"]-prev[handshakes+"failed"],
			mean("flotilla_agentgw_handshake_seconds_sum", "flotilla_agentgw_handshake_seconds_count"),
			mean("flotilla_agentgw_handshake_turn_wait_seconds_sum", "flotilla_agentgw_handshake_turn_wait_seconds_count"),
			cur["flotilla_agentgw_check_seconds_count"]-prev["flotilla_agentgw_check_seconds_count"],
			mean("flotilla_agentgw_check_seconds_sum", "flotilla_agentgw_check_seconds_count"),
			mean("flotilla_agentgw_check_turn_wait_seconds_sum", "flotilla_agentgw_check_turn_wait_seconds_count"))
		prev = cur
	}
}

// handshakes prefixes the handshakes counted by result in gatewayMetrics.
const handshakes = "flotilla_agentgw_handshakes_total/"

// gatewayMetrics reads the agent gateway's metrics from this process's
// registry: gauges by name, counters by name/label value, histograms'
// _sum and _count.
func gatewayMetrics() map[string]float64 {
	out := map[string]float64{}
	families, _ := prometheus.DefaultGatherer.Gather()
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "flotilla_agentgw_") {
			continue
		}
		for _, m := range f.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				out[f.GetName()] = m.GetGauge().GetValue()
			case m.GetCounter() != nil && len(m.GetLabel()) == 1:
				out[f.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[f.GetName()+"_sum"] = m.GetHistogram().GetSampleSum()
				out[f.GetName()+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
