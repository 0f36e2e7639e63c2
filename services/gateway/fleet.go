package gateway

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/gateway/overview"
)

// listPageSize is the page the overview lists instances by: the
// inventory's largest.
const listPageSize = 500

// GetOverview answers from the fleet overview this gateway keeps (see
// keepOverview), or unavailable while it is being built.
func (s systemServer) GetOverview(_ context.Context, _ *systemv1.GetOverviewRequest) (*systemv1.Overview, error) {
	snap, err := s.g.overview.Snapshot()
	if errors.Is(err, overview.ErrNotReady) {
		return nil, apierr.Unavailable("%v; try again in a moment", err)
	}
	if err != nil {
		return nil, err
	}
	out := &systemv1.Overview{States: make(map[string]int64, len(snap.States)), Instances: int64(snap.Instances),
		AgentsExpected: int64(snap.AgentsExpected), AgentsConnected: int64(snap.AgentsConnected),
		Sequence: snap.Sequence, Time: timestamppb.Now(), CertificateWarning: durationpb.New(snap.CertificateWarning)}
	for st, n := range snap.States {
		out.States[st] = int64(n)
	}
	for _, f := range snap.Failures {
		out.Failures = append(out.Failures, &systemv1.FailedInstance{Id: f.ID, Name: f.Name, StateDetail: f.Detail})
	}
	for _, c := range snap.CertificatesEnding {
		out.CertificatesEnding = append(out.CertificatesEnding, &systemv1.CertificateEnding{Id: c.ID, Name: c.Name, NotAfter: timestamppb.New(c.NotAfter)})
	}
	out.CertificatesEndingCount = int64(snap.CertificatesEndingCount)
	out.AgentVersions = make(map[string]int64, len(snap.AgentVersions))
	for v, n := range snap.AgentVersions {
		out.AgentVersions[v] = int64(n)
	}
	return out, nil
}

// keepOverview builds the fleet overview and keeps it current until ctx
// ends (overview.Keep), listing the instances through the inventory.
func (g *Gateway) keepOverview(ctx context.Context) {
	list := func(ctx context.Context, each func(*inventoryv1.Instance)) error {
		req := &inventoryv1.ListInstancesRequest{PageSize: listPageSize}
		for {
			resp, err := call(ctx, g, endpoints.InstanceList, req)
			if err != nil {
				return err
			}
			for _, in := range resp.GetInstances() {
				each(in)
			}
			if resp.GetNextPageToken() == "" {
				return nil
			}
			req.PageToken = resp.GetNextPageToken()
		}
	}
	g.overview.Keep(ctx, g.js, list, func(err error) {
		g.log.WarnContext(ctx, "fleet overview", "err", err)
	})
}
