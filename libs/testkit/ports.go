package testkit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreePort returns a TCP port on 127.0.0.1 that was free when asked. Another
// process may take it before the caller binds it, so prefer Port: -1 or port 0
// where the server supports it.
func FreePort(tb testing.TB) int {
	tb.Helper()
	return FreePorts(tb, 1)[0]
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free when
// asked.
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	ports, err := freePorts(n)
	if err != nil {
		tb.Fatalf("testkit: %v", err)
	}
	return ports
}

// lowestPort is where the ports FreePorts picks begin.
const lowestPort = 10000

// EphemeralLow is the first port of the kernel's ephemeral range, from which
// outgoing connections take their source ports (32768 unless the machine
// says otherwise).
func EphemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if low, err := strconv.Atoi(f[0]); err == nil && low > lowestPort+100 {
				return low
			}
		}
	}
	return 32768
}

// freePorts picks n distinct ports below the ephemeral range, each free
// when asked, holding every listener open until all n are known. Below
// that range no outgoing connection takes a port as its source between
// the choice and the caller's bind, which with the kernel's ":0" ports
// happened: a port handed out, then taken by another test's connection
// while a stack started, and the agent gateway's bind refused.
func freePorts(n int) ([]int, error) {
	high := EphemeralLow()
	ports := make([]int, 0, n)
	listeners := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries == 1000 {
			return nil, fmt.Errorf("find a free port: none of 1000 tried between %d and %d was free", lowestPort, high)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(lowestPort+rand.IntN(high-lowestPort)))
		if err != nil {
			continue
		}
		listeners = append(listeners, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
