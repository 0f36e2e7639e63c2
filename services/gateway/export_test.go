package gateway

import (
	"maps"
	"slices"
)

// RuleKeys are the routes the access table names.
func RuleKeys() []string { return slices.Sorted(maps.Keys(rules)) }
