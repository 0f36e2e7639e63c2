// Package ports exposes the inventory on the bus: one nats micro service whose
// endpoints take and return the protobuf messages of api/proto.
package ports

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/emptypb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/services/inventory/app"
)

// Pinger checks a dependency is reachable (the PostgreSQL pool).
type Pinger interface {
	Ping(ctx context.Context) error
}

// caller is who makes a request: the actor, and what the gateway says of
// the API client it is made for.
func caller(ctx context.Context, actor vocab.Actor) app.Caller {
	cred := rpc.CredentialOf(ctx)
	return app.Caller{Actor: actor, Source: rpc.Source(ctx), Role: cred.Role, TokenID: cred.TokenID}
}

// Serve registers the inventory's endpoints on nc; stop the returned service
// to stop taking requests.
func Serve(nc *nats.Conn, a *app.App, db Pinger, log *slog.Logger, tp trace.TracerProvider, version string, opts ...rpc.Option) (*rpc.Service, error) {
	s, err := rpc.New(nc, subjects.Inventory, version, "Flotilla inventory: networks, templates, instances, users", log, tp, db.Ping, opts...)
	if err != nil {
		return nil, err
	}
	errs := []error{
		rpc.Handle(s, endpoints.NetworkCreate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.CreateNetworkRequest) (*inventoryv1.Network, error) {
			return a.CreateNetwork(ctx, actor, r.GetNetwork())
		}),
		rpc.Handle(s, endpoints.NetworkGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
			return a.GetNetwork(ctx, r.GetId())
		}),
		rpc.Handle(s, endpoints.NetworkList, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.ListNetworksRequest) (*inventoryv1.ListNetworksResponse, error) {
			items, next, err := a.ListNetworks(ctx, r.GetPageSize(), r.GetPageToken())
			return &inventoryv1.ListNetworksResponse{Networks: items, NextPageToken: next}, err
		}),
		rpc.Handle(s, endpoints.NetworkUpdate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
			return a.UpdateNetwork(ctx, actor, r.GetNetwork(), r.GetUpdateMask().GetPaths())
		}),
		rpc.Handle(s, endpoints.NetworkDelete, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.DeleteNetworkRequest) (*emptypb.Empty, error) {
			return &emptypb.Empty{}, a.DeleteNetwork(ctx, actor, r.GetId(), r.GetVersion())
		}),
		rpc.Handle(s, endpoints.CloudAccountCreate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.CreateCloudAccountRequest) (*inventoryv1.CloudAccount, error) {
			return a.CreateCloudAccount(ctx, actor, r.GetCloudAccount())
		}),
		rpc.Handle(s, endpoints.CloudAccountGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetCloudAccountRequest) (*inventoryv1.CloudAccount, error) {
			return a.GetCloudAccount(ctx, r.GetId())
		}),
		rpc.Handle(s, endpoints.CloudAccountList, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.ListCloudAccountsRequest) (*inventoryv1.ListCloudAccountsResponse, error) {
			items, next, err := a.ListCloudAccounts(ctx, r.GetPageSize(), r.GetPageToken())
			return &inventoryv1.ListCloudAccountsResponse{CloudAccounts: items, NextPageToken: next}, err
		}),
		rpc.Handle(s, endpoints.CloudAccountUpdate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.UpdateCloudAccountRequest) (*inventoryv1.CloudAccount, error) {
			return a.UpdateCloudAccount(ctx, actor, r.GetCloudAccount(), r.GetUpdateMask().GetPaths())
		}),
		rpc.Handle(s, endpoints.CloudAccountDelete, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.DeleteCloudAccountRequest) (*emptypb.Empty, error) {
			return &emptypb.Empty{}, a.DeleteCloudAccount(ctx, actor, r.GetId(), r.GetVersion())
		}),
		rpc.Handle(s, endpoints.TemplateCreate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.CreateTemplateRequest) (*inventoryv1.Template, error) {
			return a.CreateTemplate(ctx, actor, r.GetTemplate())
		}),
		rpc.Handle(s, endpoints.TemplateGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetTemplateRequest) (*inventoryv1.Template, error) {
			return a.GetTemplate(ctx, r.GetId())
		}),
		rpc.Handle(s, endpoints.TemplateList, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.ListTemplatesRequest) (*inventoryv1.ListTemplatesResponse, error) {
			items, next, err := a.ListTemplates(ctx, r.GetPageSize(), r.GetPageToken())
			return &inventoryv1.ListTemplatesResponse{Templates: items, NextPageToken: next}, err
		}),
		rpc.Handle(s, endpoints.TemplateUpdate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.UpdateTemplateRequest) (*inventoryv1.Template, error) {
			return a.UpdateTemplate(ctx, actor, r.GetTemplate(), r.GetUpdateMask().GetPaths())
		}),
		rpc.Handle(s, endpoints.TemplateDelete, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.DeleteTemplateRequest) (*emptypb.Empty, error) {
			return &emptypb.Empty{}, a.DeleteTemplate(ctx, actor, r.GetId(), r.GetVersion())
		}),
		rpc.Handle(s, endpoints.InstanceCreate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.CreateInstanceRequest) (*inventoryv1.Instance, error) {
			return a.CreateInstance(ctx, actor, r.GetInstance())
		}),
		rpc.Handle(s, endpoints.InstanceGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetInstanceRequest) (*inventoryv1.Instance, error) {
			return a.GetInstance(ctx, r.GetId())
		}),
		rpc.Handle(s, endpoints.InstanceGetMany, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetInstancesRequest) (*inventoryv1.GetInstancesResponse, error) {
			items, err := a.GetInstances(ctx, r.GetIds())
			return &inventoryv1.GetInstancesResponse{Instances: items}, err
		}),
		rpc.Handle(s, endpoints.InstanceList, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.ListInstancesRequest) (*inventoryv1.ListInstancesResponse, error) {
			return a.ListInstances(ctx, r)
		}),
		rpc.Handle(s, endpoints.InstanceUpdate, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.UpdateInstanceRequest) (*inventoryv1.Instance, error) {
			return a.UpdateInstance(ctx, actor, r.GetInstance(), r.GetUpdateMask().GetPaths())
		}),
		rpc.Handle(s, endpoints.InstanceDelete, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.DeleteInstanceRequest) (*inventoryv1.Instance, error) {
			return a.DeleteInstance(ctx, actor, r.GetId(), r.GetVersion(), r.GetForce())
		}),
		rpc.Handle(s, endpoints.LifecycleRequest, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.LifecycleRequest) (*inventoryv1.Instance, error) {
			if r.GetRolloutId() != "" {
				var err error
				if actor, err = a.RolloutCreator(ctx, actor, r.GetRolloutId(), r.GetId(), vocab.Action(r.GetAction())); err != nil {
					return nil, err
				}
			}
			return a.Lifecycle(ctx, actor, r.GetId(), vocab.Action(r.GetAction()), 0)
		}),
		rpc.Handle(s, endpoints.LifecycleRecord, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.RecordStateRequest) (*inventoryv1.Instance, error) {
			return a.RecordState(ctx, actor, r)
		}),
		rpc.Handle(s, endpoints.LifecycleObserve, func(ctx context.Context, actor vocab.Actor, r *agentv1.AgentEvent) (*emptypb.Empty, error) {
			// The agent gateway reports for the agent whose certificate it
			// verified, and about that agent's instance only.
			if actor.Kind() != vocab.ActorAgent || actor.Name() != r.GetInstanceId() {
				return nil, apierr.PermissionDenied("%s may not report for instance %q", actor, r.GetInstanceId())
			}
			return &emptypb.Empty{}, a.Observe(ctx, r)
		}),
		rpc.Handle(s, endpoints.LifecycleObserveMany, func(ctx context.Context, actor vocab.Actor, r *agentv1.AgentEvents) (*agentv1.AgentEventResults, error) {
			// The agent gateway reports as itself, for the agents whose
			// certificates it verified; no one reports a batch for an agent.
			if actor != vocab.System(subjects.AgentGW) {
				return nil, apierr.PermissionDenied("%s may not report agents' events in batches: the agent gateway reports them as itself", actor)
			}
			errs, err := a.ObserveMany(ctx, r.GetEvents())
			if err != nil {
				return nil, err
			}
			resp := &agentv1.AgentEventResults{Results: make([]*agentv1.AgentEventResult, len(errs))}
			for i, err := range errs {
				kind, reason, message := apierr.ItemParts(ctx, log, err)
				resp.Results[i] = &agentv1.AgentEventResult{ErrorKind: kind, ErrorReason: reason, ErrorMessage: message}
			}
			return resp, nil
		}),
		rpc.Handle(s, endpoints.RolloutCreate, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.Rollout) (*inventoryv1.Rollout, error) {
			return a.CreateRollout(ctx, r)
		}),
		rpc.Handle(s, endpoints.RolloutGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetRolloutRequest) (*inventoryv1.Rollout, error) {
			return a.GetRollout(ctx, r.GetId())
		}),
		rpc.Handle(s, endpoints.RolloutList, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.ListRolloutsRequest) (*inventoryv1.ListRolloutsResponse, error) {
			items, next, err := a.ListRollouts(ctx, r.GetState(), r.GetPageSize(), r.GetPageToken())
			return &inventoryv1.ListRolloutsResponse{Rollouts: items, NextPageToken: next}, err
		}),
		rpc.Handle(s, endpoints.RolloutPause, controlRollout(a, subjects.VerbPause)),
		rpc.Handle(s, endpoints.RolloutResume, controlRollout(a, subjects.VerbResume)),
		rpc.Handle(s, endpoints.RolloutCancel, controlRollout(a, subjects.VerbCancel)),
		rpc.Handle(s, endpoints.RolloutRecord, func(ctx context.Context, actor vocab.Actor, r *inventoryv1.RecordRolloutRequest) (*inventoryv1.Rollout, error) {
			return a.RecordRollout(ctx, actor, r.GetRollout())
		}),
		rpc.Handle(s, endpoints.TokenLogin, func(ctx context.Context, _ vocab.Actor, r *authv1.LoginRequest) (*authv1.LoginResponse, error) {
			return a.Login(ctx, r.GetUsername(), r.GetPassword(), rpc.Source(ctx))
		}),
		rpc.Handle(s, endpoints.TokenVerify, func(ctx context.Context, _ vocab.Actor, r *authv1.VerifyTokenRequest) (*authv1.VerifyTokenResponse, error) {
			return a.VerifyToken(ctx, r.GetToken(), r.GetSource())
		}),
		rpc.Handle(s, endpoints.TokenRevoke, func(ctx context.Context, _ vocab.Actor, r *authv1.RevokeTokenRequest) (*emptypb.Empty, error) {
			return &emptypb.Empty{}, a.RevokeToken(ctx, r.GetToken(), rpc.Source(ctx))
		}),
		rpc.Handle(s, endpoints.UserCreate, func(ctx context.Context, actor vocab.Actor, r *authv1.CreateUserRequest) (*authv1.User, error) {
			return a.CreateUser(ctx, caller(ctx, actor), r)
		}),
		rpc.Handle(s, endpoints.UserGet, func(ctx context.Context, _ vocab.Actor, r *authv1.GetUserRequest) (*authv1.User, error) {
			return a.GetUser(ctx, r.GetId())
		}),
		rpc.Handle(s, endpoints.UserList, func(ctx context.Context, _ vocab.Actor, r *authv1.ListUsersRequest) (*authv1.ListUsersResponse, error) {
			return a.ListUsers(ctx, r.GetPageSize(), r.GetPageToken())
		}),
		rpc.Handle(s, endpoints.UserUpdate, func(ctx context.Context, actor vocab.Actor, r *authv1.UpdateUserRequest) (*authv1.User, error) {
			return a.UpdateUser(ctx, caller(ctx, actor), r)
		}),
		rpc.Handle(s, endpoints.UserDelete, func(ctx context.Context, actor vocab.Actor, r *authv1.DeleteUserRequest) (*emptypb.Empty, error) {
			return &emptypb.Empty{}, a.DeleteUser(ctx, caller(ctx, actor), r.GetId(), r.GetVersion())
		}),
		rpc.Handle(s, endpoints.UserResetPassword, func(ctx context.Context, actor vocab.Actor, r *authv1.ResetPasswordRequest) (*authv1.ResetPasswordResponse, error) {
			return a.ResetPassword(ctx, caller(ctx, actor), r.GetId())
		}),
		rpc.Handle(s, endpoints.UserChangePassword, func(ctx context.Context, actor vocab.Actor, r *authv1.ChangePasswordRequest) (*emptypb.Empty, error) {
			return &emptypb.Empty{}, a.ChangePassword(ctx, caller(ctx, actor), r)
		}),
		rpc.Handle(s, endpoints.APITokenCreate, func(ctx context.Context, actor vocab.Actor, r *authv1.CreateTokenRequest) (*authv1.CreateTokenResponse, error) {
			return a.CreateAPIToken(ctx, caller(ctx, actor), r)
		}),
		rpc.Handle(s, endpoints.APITokenList, func(ctx context.Context, actor vocab.Actor, r *authv1.ListTokensRequest) (*authv1.ListTokensResponse, error) {
			return a.ListAPITokens(ctx, caller(ctx, actor), r.GetPageSize(), r.GetPageToken())
		}),
		rpc.Handle(s, endpoints.APITokenDelete, func(ctx context.Context, actor vocab.Actor, r *authv1.DeleteTokenRequest) (*authv1.ApiToken, error) {
			return a.RevokeAPIToken(ctx, caller(ctx, actor), r.GetId())
		}),
		rpc.Handle(s, endpoints.AuditList, func(ctx context.Context, _ vocab.Actor, r *auditv1.ListAuditRecordsRequest) (*auditv1.ListAuditRecordsResponse, error) {
			return a.ListAudit(ctx, r)
		}),
	}
	if err := errors.Join(errs...); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// controlRollout answers an operator's pause, resume or cancel of a rollout.
func controlRollout(a *app.App, verb string) func(context.Context, vocab.Actor, *inventoryv1.RolloutActionRequest) (*inventoryv1.Rollout, error) {
	return func(ctx context.Context, actor vocab.Actor, r *inventoryv1.RolloutActionRequest) (*inventoryv1.Rollout, error) {
		return a.ControlRollout(ctx, actor, r.GetId(), r.GetVersion(), verb)
	}
}
