package gateway

import (
	"context"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"flotilla.dev/flotilla/api/endpoints"
	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
)

// userServer implements the public UserService by forwarding to the
// inventory. A change to a user drops what this gateway cached of their
// tokens before it answers; other gateways drop it when the change's
// audit record goes by.
type userServer struct {
	authv1.UnimplementedUserServiceServer
	g *Gateway
}

func (s userServer) CreateUser(ctx context.Context, r *authv1.CreateUserRequest) (*authv1.User, error) {
	return call(ctx, s.g, endpoints.UserCreate, r)
}

func (s userServer) GetUser(ctx context.Context, r *authv1.GetUserRequest) (*authv1.User, error) {
	return call(ctx, s.g, endpoints.UserGet, r)
}

func (s userServer) ListUsers(ctx context.Context, r *authv1.ListUsersRequest) (*authv1.ListUsersResponse, error) {
	return call(ctx, s.g, endpoints.UserList, r)
}

func (s userServer) UpdateUser(ctx context.Context, r *authv1.UpdateUserRequest) (*authv1.User, error) {
	return changeUser(ctx, s.g, endpoints.UserUpdate, r, r.GetId())
}

func (s userServer) DeleteUser(ctx context.Context, r *authv1.DeleteUserRequest) (*emptypb.Empty, error) {
	return changeUser(ctx, s.g, endpoints.UserDelete, r, r.GetId())
}

func (s userServer) ResetPassword(ctx context.Context, r *authv1.ResetPasswordRequest) (*authv1.ResetPasswordResponse, error) {
	return changeUser(ctx, s.g, endpoints.UserResetPassword, r, r.GetId())
}

// GetCurrentUser reads the user the request's token belongs to.
func (s userServer) GetCurrentUser(ctx context.Context, _ *authv1.GetCurrentUserRequest) (*authv1.User, error) {
	return call(ctx, s.g, endpoints.UserGet, &authv1.GetUserRequest{Id: userFrom(ctx).GetUserId()})
}

// ChangePassword changes the caller's own password; the inventory keeps
// the session it is made with and ends the others.
func (s userServer) ChangePassword(ctx context.Context, r *authv1.ChangePasswordRequest) (*emptypb.Empty, error) {
	return changeUser(ctx, s.g, endpoints.UserChangePassword, r, userFrom(ctx).GetUserId())
}

// changeUser calls an endpoint that changes user userID and, once it has,
// forgets what this gateway cached of the user's tokens.
func changeUser[Req, Resp proto.Message](ctx context.Context, g *Gateway, ep endpoints.Endpoint[Req, Resp], req Req, userID string) (Resp, error) {
	resp, err := call(ctx, g, ep, req)
	if err == nil {
		g.tokens.dropUser(userID)
	}
	return resp, err
}

// tokenServer implements the public TokenService by forwarding to the inventory.
type tokenServer struct {
	authv1.UnimplementedTokenServiceServer
	g *Gateway
}

func (s tokenServer) CreateToken(ctx context.Context, r *authv1.CreateTokenRequest) (*authv1.CreateTokenResponse, error) {
	return call(ctx, s.g, endpoints.APITokenCreate, r)
}

func (s tokenServer) ListTokens(ctx context.Context, r *authv1.ListTokensRequest) (*authv1.ListTokensResponse, error) {
	return call(ctx, s.g, endpoints.APITokenList, r)
}

// DeleteToken revokes an API token: this gateway forgets it before
// answering, every other one when the revocation's record goes by.
func (s tokenServer) DeleteToken(ctx context.Context, r *authv1.DeleteTokenRequest) (*emptypb.Empty, error) {
	t, err := call(ctx, s.g, endpoints.APITokenDelete, r)
	if err != nil {
		return nil, err
	}
	s.g.tokens.drop(t.GetTokenId())
	return &emptypb.Empty{}, nil
}

// auditServer reads the audit trail from the inventory's projection.
type auditServer struct {
	auditv1.UnimplementedAuditServiceServer
	g *Gateway
}

func (s auditServer) ListAuditRecords(ctx context.Context, r *auditv1.ListAuditRecordsRequest) (*auditv1.ListAuditRecordsResponse, error) {
	return call(ctx, s.g, endpoints.AuditList, r)
}
