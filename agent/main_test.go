package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"

	"flotilla.dev/flotilla/libs/testkit"
)

// nodeHelperArg makes the test binary run the node software instead of the
// tests: the agent's tests start it as their node software.
const nodeHelperArg = "agent-test-node"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == nodeHelperArg {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		cmd := NewCommand()
		cmd.SetArgs(append([]string{"node"}, os.Args[2:]...))
		err := cmd.ExecuteContext(ctx)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "node:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	testkit.Main(m) // a test PostgreSQL for the tests with the whole stack
}

// NodeHelper is the command that runs the node software from this test
// binary.
func NodeHelper() []string { return []string{os.Args[0], nodeHelperArg} }

// FlagArgs is flagArgs for the external tests.
var FlagArgs = flagArgs

// NewTestLog is testLog for the external tests.
func NewTestLog(t *testing.T) *slog.Logger { return testLog(t) }

// testLog logs to t until the test ends, then discards.
func testLog(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // registered first, so it runs last
	return slog.New(slog.NewTextHandler(w, nil))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
