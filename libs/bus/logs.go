package bus

import (
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/subjects"
)

// LogLineMsg builds the message of one agent log line on the agent-log
// stream: the instance's subject, the message id "<instance-id>-<seq>" that
// lets JetStream drop a resent line, and the line itself (an
// agentv1.LogLine) as the payload. Log lines carry no other header (no
// envelope, no trace context), so a line costs little more than its text.
func LogLineMsg(instanceID string, l *agentv1.LogLine) (*nats.Msg, error) {
	data, err := proto.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("encode log line %d of %s: %w", l.GetSeq(), instanceID, err)
	}
	m := nats.NewMsg(subjects.AgentLogs(instanceID))
	m.Header.Set(HeaderMsgID, instanceID+"-"+strconv.FormatUint(l.GetSeq(), 10))
	m.Data = data
	return m, nil
}
