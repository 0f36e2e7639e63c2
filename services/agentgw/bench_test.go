package agentgw_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/services/agentgw"
)

// Run these side by side (docs/benchmarks.md has the figures):
//
//	go test -run '^$' -bench Logs -benchtime 100000x -count 3 ./services/agentgw/
//
// Each reports lines/s. BenchmarkLogsThroughTheGateway is the whole path of
// a chatty agent: batches of 500 lines (as the agent sends them) over its
// mTLS stream, published by the gateway, until the LogAck of the last line
// (JetStream stored them all). BenchmarkLogsJetStreamAsync is the reference:
// the same payloads and message ids published straight to JetStream,
// asynchronously, as many in flight as the gateway allows one stream, until
// every acknowledgement is in.

// benchLines makes n log lines of a setup script, numbered from 1.
func benchLines(n int) []*agentv1.LogLine {
	now := timestamppb.Now()
	lines := make([]*agentv1.LogLine, n)
	for i := range lines {
		lines[i] = &agentv1.LogLine{Seq: uint64(i + 1), Time: now, Source: "setup",
			Text: fmt.Sprintf("%06d installing package %d of a long list: unpacking, configuring, done", i+1, i+1)}
	}
	return lines
}

func linesPerSecond(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lines/s")
}

func BenchmarkLogsThroughTheGateway(b *testing.B) {
	e := newEnv(b, envOptions{})
	id := fmt.Sprintf("inst-bench-%d", b.N)
	stream := e.connect(id)
	lines := benchLines(b.N)
	acked := make(chan uint64, 1024)
	go func() {
		for {
			m, err := stream.AgentGateway_ConnectClient.Recv()
			if err != nil {
				close(acked)
				return
			}
			if a := m.GetLogAck(); a != nil {
				acked <- a.GetSeq()
			}
		}
	}()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(lines); i += 500 {
		batch := lines[i:min(i+500, len(lines))]
		if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Logs{Logs: &agentv1.LogBatch{Lines: batch}}}); err != nil {
			b.Fatal(err)
		}
	}
	for seq := range acked {
		if seq == uint64(b.N) {
			linesPerSecond(b, start)
			return
		}
	}
	b.Fatal("the stream ended before the last line was acknowledged")
}

func BenchmarkLogsJetStreamAsync(b *testing.B) {
	e := newEnv(b, envOptions{})
	js, err := jetstream.New(e.bus.Conn(b, subjects.AgentGW), jetstream.WithPublishAsyncMaxPending(agentgw.MaxLogsInFlight))
	if err != nil {
		b.Fatal(err)
	}
	id := fmt.Sprintf("inst-raw-%d", b.N)
	lines := benchLines(b.N)
	b.ResetTimer()
	start := time.Now()
	for _, l := range lines {
		m, err := bus.LogLineMsg(id, l)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("acknowledgements missing after a minute")
	}
	linesPerSecond(b, start)
}
