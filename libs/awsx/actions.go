package awsx

import (
	"context"
	"slices"
	"strings"
	"sync"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go/middleware"
)

// Actions records the IAM actions ("ec2:RunInstances") called through
// configurations built WithActions: the least-privilege test compares
// them with deployments/aws/iam-policy.json.
type Actions struct {
	mu  sync.Mutex
	set map[string]struct{}
}

// iamPrefix maps the SDK's service ids to IAM's action prefixes where
// they differ from the id in lower case without spaces.
var iamPrefix = map[string]string{
	"Route 53":        "route53",
	"Secrets Manager": "secretsmanager",
}

// Action is the IAM action name of a call to operation of the SDK service
// serviceID.
func Action(serviceID, operation string) string {
	p, ok := iamPrefix[serviceID]
	if !ok {
		p = strings.ToLower(strings.ReplaceAll(serviceID, " ", ""))
	}
	return p + ":" + operation
}

// List returns the recorded actions, sorted.
func (r *Actions) List() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.set))
	for a := range r.set {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func (r *Actions) add(a string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.set == nil {
		r.set = map[string]struct{}{}
	}
	r.set[a] = struct{}{}
}

func (r *Actions) middleware(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("FlotillaRecordAction",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			r.add(Action(awsmiddleware.GetServiceID(ctx), awsmiddleware.GetOperationName(ctx)))
			return next.HandleInitialize(ctx, in)
		}), middleware.After)
}
