package gateway_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
)

func TestTheSameAPIOverGRPC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nets := inventoryv1.NewNetworkServiceClient(conn)
	ctx := context.Background()
	_, err = nets.ListNetworks(ctx, &inventoryv1.ListNetworksRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	st, err := systemv1.NewSystemServiceClient(conn).GetStatus(ctx, &systemv1.GetStatusRequest{})
	if err != nil || st.GetStatus() != "ok" {
		t.Fatalf("status without token: %v %v", st, err)
	}
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.token)
	n, err := nets.CreateNetwork(authed, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{Name: "grpc-net", Provider: "local", HttpsStrategy: "self-signed"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = nets.CreateNetwork(authed, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{Name: "grpc-net", Provider: "local", HttpsStrategy: "none"}})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("duplicate name over gRPC: %v", err)
	}
	_, err = nets.CreateNetwork(authed, &inventoryv1.CreateNetworkRequest{Network: &inventoryv1.Network{Name: "x", Provider: "azure", HttpsStrategy: "none"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad provider over gRPC: %v", err)
	}
	got := e.must(200, "GET", "/api/v1/networks/"+n.GetId(), nil)
	if got["name"] != "grpc-net" || got["httpsStrategy"] != "self-signed" {
		t.Fatalf("network made over gRPC, read over REST: %v", got)
	}
}

// grpcConn is a gRPC connection to the gateway, closed when the test ends,
// and ctx carrying the env's bearer token.
func (e *env) grpcConn(ctx context.Context) (*grpc.ClientConn, context.Context) {
	e.t.Helper()
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn, metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.token)
}
