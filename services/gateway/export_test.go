package gateway

import (
	"maps"
	"slices"
)

// RuleKeys are the routes the access table names.
func RuleKeys() []string { return slices.Sorted(maps.Keys(rules)) }

// AuditStalled is how long a call's record waits before the next call's
// joins the late ones instead of waiting too.
const AuditStalled = auditStalled
