// Command apiload drives a running Flotilla's REST API on this machine: it
// logs in, then for a bounded number of requests (and at most a bounded
// time) creates, reads and lists networks from several workers, deletes what
// it created, and prints latency percentiles per operation. It refuses any
// target outside the loopback range.
//
//	go run ./loadtest/cmd/apiload -url http://127.0.0.1:7700 -user admin -password 'S3cret-pass' -n 2000 -c 8
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/flotilla/loadtest/apiclient"
)

func main() {
	var (
		target   = flag.String("url", "http://127.0.0.1:7700", "Flotilla base URL (loopback only)")
		user     = flag.String("user", "admin", "user name")
		password = flag.String("password", "", "password")
		n        = flag.Int("n", 1000, "total create+read+list rounds (at most 100000)")
		c        = flag.Int("c", 4, "concurrent workers (at most 64)")
		maxTime  = flag.Duration("max-time", time.Minute, "stop after this long (at most 10m)")
	)
	flag.Parse()
	if err := run(*target, *user, *password, min(*n, 100000), min(*c, 64), min(*maxTime, 10*time.Minute)); err != nil {
		fmt.Fprintln(os.Stderr, "apiload:", err)
		os.Exit(1)
	}
}

func run(target, user, password string, n, c int, maxTime time.Duration) error {
	if err := apiclient.Loopback("-url", target); err != nil {
		return err
	}
	ctx := context.Background()
	cl := apiclient.New(target, c, 30*time.Second)
	if err := cl.Login(ctx, user, password); err != nil {
		return err
	}

	ops := []string{"create", "get", "list", "delete"}
	lat := map[string][]time.Duration{}
	var mu sync.Mutex
	var next, failures atomic.Int64
	deadline := time.Now().Add(maxTime)
	run := fmt.Sprintf("%x", time.Now().UnixNano())
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) || time.Now().After(deadline) {
					return
				}
				var created struct{ ID string }
				steps := []struct {
					op string
					f  func() error
				}{
					{"create", func() error {
						err := cl.Do(ctx, "POST", "/api/v1/networks", map[string]string{"name": fmt.Sprintf("load-%s-%d", run, i), "provider": "local", "httpsStrategy": "none"}, &created)
						return err
					}},
					{"get", func() error { return cl.Do(ctx, "GET", "/api/v1/networks/"+created.ID, nil, nil) }},
					{"list", func() error { return cl.Do(ctx, "GET", "/api/v1/networks?pageSize=20", nil, nil) }},
					{"delete", func() error { return cl.Do(ctx, "DELETE", "/api/v1/networks/"+created.ID, nil, nil) }},
				}
				for _, s := range steps {
					t0 := time.Now()
					if err := s.f(); err != nil {
						failures.Add(1)
						fmt.Fprintln(os.Stderr, err)
						break
					}
					mu.Lock()
					lat[s.op] = append(lat[s.op], time.Since(t0))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	total := 0
	fmt.Printf("%-8s %8s %10s %10s %10s %10s\n", "op", "count", "p50", "p90", "p99", "max")
	for _, op := range ops {
		d := lat[op]
		total += len(d)
		if len(d) == 0 {
			continue
		}
		slices.Sort(d)
		p := func(q float64) time.Duration { return d[int(q*float64(len(d)-1))] }
		fmt.Printf("%-8s %8d %10v %10v %10v %10v\n", op, len(d), p(0.5), p(0.9), p(0.99), d[len(d)-1])
	}
	fmt.Printf("%d requests in %v (%.0f/s), %d failures, %d workers\n", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), failures.Load(), c)
	if failures.Load() > 0 {
		return fmt.Errorf("%d failures", failures.Load())
	}
	return nil
}
