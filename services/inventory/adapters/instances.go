package adapters

import "strings"

// InstanceFilter narrows a list of instances; an empty field does not.
type InstanceFilter struct {
	State, Kind, NetworkID, TemplateID string
	// Text is searched for, ignoring case, in the name, the id, the VM id
	// and every address.
	Text   string
	ByName bool
	Skip   int
}

// instanceText are the instances' columns and spec fields Text searches.
// instance_search_text (migration 00008) joins the same fields, one to a
// line, for the trigram index a search reads first.
var instanceText = []string{
	"name", "id::text", "spec->>'vmId'",
	"spec->'addresses'->>'privateIp'", "spec->'addresses'->>'publicIp'",
	"spec->'addresses'->>'privateDns'", "spec->'addresses'->>'publicDns'",
	"spec->'addresses'->>'hostname'", "spec->'addresses'->>'url'",
}

// Query is f as a query of the instances table.
func (f InstanceFilter) Query() ListQuery {
	q := ListQuery{ByName: f.ByName, Skip: f.Skip}
	add := func(sql string, v string) {
		if v != "" {
			q.Where = append(q.Where, Cond{SQL: sql, Args: []any{v}})
		}
	}
	add("state = ?", f.State)
	add("spec->>'kind' = ?", f.Kind)
	add("network_id = ?::uuid", f.NetworkID)
	add("template_id = ?::uuid", f.TemplateID)
	if f.Text != "" {
		like := "%" + likeEscaper.Replace(f.Text) + "%"
		// The joined text first, which the index answers; then each field,
		// so that text spanning two of them does not match.
		ors := make([]string, len(instanceText))
		args := []any{like}
		for i, col := range instanceText {
			ors[i] = col + " ILIKE ?"
			args = append(args, like)
		}
		q.Where = append(q.Where, Cond{SQL: "instance_search_text(name, id, spec) ILIKE ? AND (" + strings.Join(ors, " OR ") + ")", Args: args})
	}
	return q
}

// likeEscaper makes text match itself in a LIKE pattern (whose escape
// character is the backslash).
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
