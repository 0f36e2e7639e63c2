package agentgw

import "sync/atomic"

// onDemand is a worker that runs only while work waits for it: a gateway
// holds thousands of streams, quiet between heartbeats, and a goroutine for
// each of their queues would keep its stack. Whoever queues work calls
// start; the worker, finding nothing more, calls stop, and carries on if
// stop says so. One worker runs at a time, so what it keeps between runs
// needs no lock.
type onDemand struct{ running atomic.Bool }

// start runs spawn (which starts the worker on a goroutine) unless a
// worker runs.
func (o *onDemand) start(spawn func()) {
	if o.running.CompareAndSwap(false, true) {
		spawn()
	}
}

// stop is the worker's, once it found nothing waiting: it reports whether
// the worker must go on, because work queued meanwhile found it running
// and started none.
func (o *onDemand) stop(waiting func() bool) bool {
	o.running.Store(false)
	return waiting() && o.running.CompareAndSwap(false, true)
}

// idle reports whether no worker runs.
func (o *onDemand) idle() bool { return !o.running.Load() }
