package awsx

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// policyDocument is the part of an IAM policy document the least-privilege
// check reads: the actions its Allow statements grant.
type policyDocument struct {
	Version   string `json:"Version"`
	Statement []struct {
		Effect string          `json:"Effect"`
		Action json.RawMessage `json:"Action"`
	} `json:"Statement"`
}

// NotAllowed returns the actions ("ec2:RunInstances") that no Allow
// statement of the IAM policy document policy grants, as IAM matches them
// (case-insensitive, with * and ? wildcards). The least-privilege tests
// pass it what Actions recorded.
func NotAllowed(policy []byte, actions []string) ([]string, error) {
	var doc policyDocument
	if err := json.Unmarshal(policy, &doc); err != nil {
		return nil, fmt.Errorf("IAM policy: %w", err)
	}
	if doc.Version != "2012-10-17" {
		return nil, fmt.Errorf("IAM policy: Version: %q is not 2012-10-17", doc.Version)
	}
	var granted []string
	for i, st := range doc.Statement {
		if st.Effect != "Allow" {
			continue
		}
		var list []string
		if err := json.Unmarshal(st.Action, &list); err != nil {
			var one string
			if err := json.Unmarshal(st.Action, &one); err != nil {
				return nil, fmt.Errorf("IAM policy: Statement[%d].Action: is neither a string nor a list of strings", i)
			}
			list = []string{one}
		}
		for _, a := range list {
			granted = append(granted, strings.ToLower(a))
		}
	}
	var missing []string
	for _, a := range actions {
		if !grants(granted, strings.ToLower(a)) {
			missing = append(missing, a)
		}
	}
	return missing, nil
}

func grants(patterns []string, action string) bool {
	for _, p := range patterns {
		// path.Match's * stops at "/", which IAM action names never hold.
		if ok, err := path.Match(p, action); err == nil && ok {
			return true
		}
	}
	return false
}
