// Command fleetbench measures a running Flotilla on this machine beside a
// reference measured the same way in the same run, and prints one JSON line
// per figure:
//
//   - "get": GET /api/v1/instances/{id} against a hello-world Go HTTP server,
//     the same client and workers;
//   - "write": POST /api/v1/networks (a row and its event committed) against
//     single-row INSERT commits straight to the same PostgreSQL, the same
//     number of workers (needs -pg);
//   - "provision-one": one local instance at a time, the API call to running
//     (-one times; p50 and max);
//   - "provision-many": -many local instances asked at once, until all run.
//
// It cleans up what it created, refuses targets outside the loopback range,
// and bounds every count and duration.
//
//	go run ./cmd/fleetbench -api http://127.0.0.1:7700 -password 'S3cret-pass' -pg "$DATABASE_URL"
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla.dev/flotilla/loadtest/apiclient"
)

func main() {
	var (
		api      = flag.String("api", "http://127.0.0.1:7700", "Flotilla base URL (loopback only)")
		user     = flag.String("user", "admin", "user name")
		password = flag.String("password", "", "password")
		pg       = flag.String("pg", "", "PostgreSQL URL of the same server, for the write reference (loopback only; empty: skip \"write\")")
		workers  = flag.Int("c", 8, "concurrent workers for get and write (at most 64)")
		dur      = flag.Duration("d", 10*time.Second, "how long each throughput figure runs (at most 2m)")
		one      = flag.Int("one", 5, "instances provisioned one at a time (at most 50; 0: skip)")
		many     = flag.Int("many", 100, "instances provisioned at once (at most 200; 0: skip)")
		timeout  = flag.Duration("timeout", 3*time.Minute, "longest wait for instances to run")
		hold     = flag.Duration("hold", 0, "keep the instances running this long after the last figure, before cleaning up (at most 1m), e.g. to measure the agents")
	)
	flag.Parse()
	b := &bench{ctx: context.Background(), workers: min(max(*workers, 1), 64), dur: min(*dur, 2*time.Minute), timeout: min(*timeout, 10*time.Minute), hold: min(*hold, time.Minute)}
	if err := b.run(*api, *user, *password, *pg, min(*one, 50), min(*many, 200)); err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	ctx     context.Context
	cl      *apiclient.Client
	workers int
	dur     time.Duration
	timeout time.Duration
	hold    time.Duration
	tag     string
}

func (b *bench) run(api, user, password, pg string, one, many int) error {
	if err := apiclient.Loopback("-api", api); err != nil {
		return err
	}
	if pg != "" {
		cfg, err := pgx.ParseConfig(pg)
		if err != nil {
			return fmt.Errorf("-pg: %w", err)
		}
		if err := apiclient.Loopback("-pg", cfg.Host); err != nil {
			return err
		}
	}
	b.cl = apiclient.New(api, 64, 30*time.Second)
	if err := b.cl.Login(b.ctx, user, password); err != nil {
		return err
	}
	b.tag = fmt.Sprintf("fb%x", time.Now().UnixNano()&0xffffffff)

	netID, tmplID, err := b.placement()
	if err != nil {
		return err
	}
	defer b.cleanup(netID, tmplID)
	if err := b.get(netID, tmplID); err != nil {
		return err
	}
	if pg != "" {
		if err := b.write(pg); err != nil {
			return err
		}
	}
	if one > 0 {
		if err := b.provisionOne(netID, tmplID, one); err != nil {
			return err
		}
	}
	if many > 0 {
		if err := b.provisionMany(netID, tmplID, many); err != nil {
			return err
		}
	}
	if b.hold > 0 {
		report(map[string]any{"figure": "holding", "seconds": b.hold.Seconds()})
		time.Sleep(b.hold)
	}
	return nil
}

// report prints one figure as a JSON line.
func report(fields map[string]any) {
	out, _ := json.Marshal(fields)
	fmt.Println(string(out))
}

func (b *bench) placement() (string, string, error) {
	var n, t struct{ ID string }
	if err := b.cl.Do(b.ctx, "POST", "/api/v1/networks", map[string]any{"name": b.tag, "provider": "local", "httpsStrategy": "none"}, &n); err != nil {
		return "", "", err
	}
	if err := b.cl.Do(b.ctx, "POST", "/api/v1/templates", map[string]any{"name": b.tag, "provider": "local", "dataDiskGb": 1}, &t); err != nil {
		return "", "", err
	}
	return n.ID, t.ID, nil
}

// get measures reading one instance against a hello-world server.
func (b *bench) get(netID, tmplID string) error {
	id, err := b.createInstance(netID, tmplID, b.tag+"-get")
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hello := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"hello":"world"}`)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hello.Serve(l) }()
	defer hello.Close()
	ref := &apiclient.Client{Base: "http://" + l.Addr().String(), HTTP: b.cl.HTTP}
	refRate, _, err := b.throughput(func(int64) error { return ref.Do(b.ctx, "GET", "/", nil, nil) })
	if err != nil {
		return err
	}
	rate, p50, err := b.throughput(func(int64) error { return b.cl.Do(b.ctx, "GET", "/api/v1/instances/"+id, nil, nil) })
	if err != nil {
		return err
	}
	report(map[string]any{"figure": "get", "what": "GET /api/v1/instances/{id}", "perSecond": round(rate), "p50ms": ms(p50),
		"reference": "hello-world Go HTTP server", "referencePerSecond": round(refRate), "ratio": round2(rate / refRate), "workers": b.workers})
	return nil
}

// write measures creating networks against single-row commits.
func (b *bench) write(pg string) error {
	ctx := context.Background()
	// A table of its own, logged like Flotilla's (a temporary one would
	// skip the write-ahead log and flatter the reference), dropped after.
	table := pgx.Identifier{b.tag}.Sanitize()
	conns := make([]*pgx.Conn, b.workers)
	for i := range conns {
		c, err := pgx.Connect(ctx, pg)
		if err != nil {
			return fmt.Errorf("-pg: %w", err)
		}
		defer c.Close(ctx)
		conns[i] = c
	}
	if _, err := conns[0].Exec(ctx, `CREATE TABLE `+table+` (id bigint PRIMARY KEY, name text NOT NULL, spec jsonb NOT NULL)`); err != nil {
		return fmt.Errorf("-pg: %w", err)
	}
	defer func() { _, _ = conns[0].Exec(ctx, `DROP TABLE `+table) }()
	refRate, _, err := b.throughputPer(func(w int, i int64) error {
		_, err := conns[w].Exec(ctx, `INSERT INTO `+table+` (id, name, spec) VALUES ($1, $2, $3)`, i, fmt.Sprintf("n-%d", i),
			`{"name":"n","provider":"local","httpsStrategy":"none"}`)
		return err
	})
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var created []string
	rate, p50, err := b.throughput(func(i int64) error {
		var n struct{ ID string }
		if err := b.cl.Do(b.ctx, "POST", "/api/v1/networks", map[string]any{"name": fmt.Sprintf("%s-w%d", b.tag, i), "provider": "local", "httpsStrategy": "none"}, &n); err != nil {
			return err
		}
		mu.Lock()
		created = append(created, n.ID)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	report(map[string]any{"figure": "write", "what": "POST /api/v1/networks", "perSecond": round(rate), "p50ms": ms(p50),
		"reference": "single-row INSERT commits to the same PostgreSQL", "referencePerSecond": round(refRate), "ratio": round2(rate / refRate), "workers": b.workers})
	b.parallel(len(created), func(i int) error { return b.cl.Do(b.ctx, "DELETE", "/api/v1/networks/"+created[i], nil, nil) })
	return nil
}

// throughput runs f from every worker for b.dur and returns calls per
// second and the median latency.
func (b *bench) throughput(f func(i int64) error) (float64, time.Duration, error) {
	return b.throughputPer(func(_ int, i int64) error { return f(i) })
}

func (b *bench) throughputPer(f func(worker int, i int64) error) (float64, time.Duration, error) {
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	deadline := time.Now().Add(b.dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range b.workers {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := f(w, next.Add(1)); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	if len(lat) == 0 {
		return 0, 0, errors.New("no call completed")
	}
	slices.Sort(lat)
	return float64(len(lat)) / time.Since(start).Seconds(), lat[len(lat)/2], nil
}

// provisionOne provisions n instances one after another.
func (b *bench) provisionOne(netID, tmplID string, n int) error {
	var took []time.Duration
	for i := range n {
		id, err := b.createInstance(netID, tmplID, fmt.Sprintf("%s-one-%d", b.tag, i))
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := b.cl.Do(b.ctx, "POST", "/api/v1/instances/"+id+":provision", map[string]any{}, nil); err != nil {
			return err
		}
		if err := b.waitRunning([]string{id}, 5*time.Millisecond); err != nil {
			return err
		}
		took = append(took, time.Since(t0))
	}
	slices.Sort(took)
	report(map[string]any{"figure": "provision-one", "what": "one local instance, POST :provision to running", "count": n,
		"p50ms": ms(took[len(took)/2]), "maxms": ms(took[len(took)-1]), "target": "p50 < 500 ms"})
	return nil
}

// provisionMany provisions n instances at once.
func (b *bench) provisionMany(netID, tmplID string, n int) error {
	ids := make([]string, n)
	if err := b.parallel(n, func(i int) error {
		id, err := b.createInstance(netID, tmplID, fmt.Sprintf("%s-many-%d", b.tag, i))
		ids[i] = id
		return err
	}); err != nil {
		return err
	}
	t0 := time.Now()
	if err := b.parallel(n, func(i int) error {
		return b.cl.Do(b.ctx, "POST", "/api/v1/instances/"+ids[i]+":provision", map[string]any{}, nil)
	}); err != nil {
		return err
	}
	if err := b.waitRunning(ids, 100*time.Millisecond); err != nil {
		return err
	}
	report(map[string]any{"figure": "provision-many", "what": "local instances asked at once, until all run", "count": n,
		"allRunningMs": ms(time.Since(t0)), "target": "100 in < 10 s"})
	return nil
}

// waitRunning looks at the instances every pause until all run.
func (b *bench) waitRunning(ids []string, pause time.Duration) error {
	deadline := time.Now().Add(b.timeout)
	left := slices.Clone(ids)
	for len(left) > 0 {
		var still []string
		for _, id := range left {
			var in struct{ State, StateDetail string }
			if err := b.cl.Do(b.ctx, "GET", "/api/v1/instances/"+id, nil, &in); err != nil {
				return err
			}
			switch in.State {
			case "running":
			case "failed":
				return fmt.Errorf("instance %s failed: %s", id, in.StateDetail)
			default:
				still = append(still, id)
			}
		}
		if left = still; len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d instances not running after %v", len(left), b.timeout)
		}
		time.Sleep(pause)
	}
	return nil
}

func (b *bench) createInstance(netID, tmplID, name string) (string, error) {
	var in struct{ ID string }
	err := b.cl.Do(b.ctx, "POST", "/api/v1/instances", map[string]any{"name": name, "kind": "design", "templateId": tmplID, "networkId": netID}, &in)
	return in.ID, err
}

// cleanup deletes every instance, then the network and template, waiting
// for the instances to go.
func (b *bench) cleanup(netID, tmplID string) {
	var page struct {
		Instances []struct {
			ID, Name, TemplateID string
		}
	}
	if err := b.cl.Do(b.ctx, "GET", "/api/v1/instances?pageSize=500", nil, &page); err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench: cleanup:", err)
		return
	}
	var mine []string
	for _, in := range page.Instances {
		if in.TemplateID == tmplID {
			mine = append(mine, in.ID)
		}
	}
	_ = b.parallel(len(mine), func(i int) error { return b.cl.Do(b.ctx, "DELETE", "/api/v1/instances/"+mine[i], nil, nil) })
	deadline := time.Now().Add(2 * time.Minute)
	for _, id := range mine {
		for time.Now().Before(deadline) {
			if err := b.cl.Do(b.ctx, "GET", "/api/v1/instances/"+id, nil, nil); err != nil {
				break // gone
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	_ = b.cl.Do(b.ctx, "DELETE", "/api/v1/templates/"+tmplID, nil, nil)
	_ = b.cl.Do(b.ctx, "DELETE", "/api/v1/networks/"+netID, nil, nil)
}

// parallel runs f(0..n-1) from 16 workers and returns the first error.
func (b *bench) parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range min(n, 16) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}

func round(f float64) float64  { return float64(int64(f + 0.5)) }
func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }
func ms(d time.Duration) float64 {
	return round2(float64(d.Microseconds()) / 1000)
}
