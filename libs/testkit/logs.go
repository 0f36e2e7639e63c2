package testkit

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/libs/bus"
)

// StoreAgentLogs stores the setup lines from..to ("line <n>", seq n) of
// instance id on the agent-log stream as the agent gateway does; nc must
// have the agent gateway's credentials.
func StoreAgentLogs(tb testing.TB, nc *nats.Conn, id string, from, to int) {
	tb.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	for i := from; i <= to; i++ {
		m, err := bus.LogLineMsg(id, &agentv1.LogLine{Seq: uint64(i), Time: timestamppb.Now(), Source: "setup", Text: fmt.Sprintf("line %d", i)})
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := js.PublishMsgAsync(m); err != nil {
			tb.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		tb.Fatal("log lines not stored in 30 s")
	}
}
