package console

import (
	"fmt"
	"html/template"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// funcs are the helpers every template may call.
var funcs = template.FuncMap{
	"ts":          tsISO,
	"tsExact":     tsExact,
	"utc":         utc,
	"ago":         ago,
	"clock":       clock,
	"bytes":       humanBytes,
	"short":       shortID,
	"join":        strings.Join,
	"nodeURL":     nodeURL,
	"stepsOf":     stepsOf,
	"behind":      vocab.TemplateBehind,
	"agentBehind": agentBehind,
	"logSource":   vocab.LogSource,
	"counted":     counted,
	"diskShare":   diskShare,
	"field":       func(f *form, path string) *formField { return f.field(path) },
	"errFor":      func(f *form, path string) string { return f.errFor(path) },
	"inputID":     inputID,
	"doneSteps":   doneSteps,
	"add1":        func(i int) int { return i + 1 },
	"ctx":         func(f *form, fd *formField) fieldCtx { return fieldCtx{Form: f, F: fd} },
	"actionType": func(a *setupActionRow) *formField {
		return &formField{Path: fmt.Sprintf("setupActions[%d].type", a.Index), Label: fmt.Sprintf("Action %d", a.Index+1),
			Kind: kindSelect, Options: words(vocab.SetupActions), Value: a.Type}
	},
	"contains": slices.Contains[[]string],
	// from is the states an action changes an instance in, for the page
	// to show it only then (data-from, kept true as the state changes).
	"from": func(a string) string {
		var b strings.Builder
		for i, s := range vocab.Action(a).From() {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(string(s))
		}
		return b.String()
	},
	// applies says whether an action changes an instance in state.
	"applies": func(a, state string) bool { return slices.Contains(vocab.Action(a).From(), vocab.State(state)) },
}

// tsISO is a timestamp for a <time datetime> attribute ("" when unset).
func tsISO(t *timestamppb.Timestamp) string {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

// tsExact is a time to the nanosecond, as a form sends it back (a
// change's ifUpdateTime).
func tsExact(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

// timeLayout is how a page writes a time in full.
const timeLayout = "2006-01-02 15:04:05 UTC"

// utc writes t in full, in UTC ("—" when unset).
func utc(t *timestamppb.Timestamp) string {
	if tsISO(t) == "" {
		return "—"
	}
	return t.AsTime().UTC().Format(timeLayout)
}

// clock is the time of day of t, to the millisecond (UTC), for log lines.
func clock(t *timestamppb.Timestamp) string {
	return t.AsTime().UTC().Format("15:04:05.000")
}

// ago says how long ago t was, coarsely ("never" when unset).
func ago(t *timestamppb.Timestamp) string {
	if tsISO(t) == "" {
		return "never"
	}
	return sinceText(time.Since(t.AsTime()))
}

func sinceText(d time.Duration) string {
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d s ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

// humanBytes writes a byte count in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// shortID is the first block of a UUID, enough to tell ids apart on a page.
func shortID(id string) string {
	if i := strings.IndexByte(id, '-'); i > 0 {
		return id[:i]
	}
	return id
}

// nodeURL returns an instance's node URL when it is one a link may point
// to (http or https), else "".
func nodeURL(in *inventoryv1.Instance) string {
	u, err := url.Parse(in.GetAddresses().GetUrl())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	return u.String()
}

// diskShare is the share of the data disk in use, 0-1 (0 when unknown).
func diskShare(in *inventoryv1.Instance) float64 {
	d := in.GetDataDisk()
	if d.GetTotalBytes() <= 0 {
		return 0
	}
	return min(float64(d.GetUsedBytes())/float64(d.GetTotalBytes()), 1)
}

// stepView is one provisioning step as the instance page shows it.
type stepView struct {
	Step   string
	Status string // "done", "current", "failed" or "todo"
}

// stepsOf places an instance on the provisioning steps: which are done,
// which is under way or failed.
func stepsOf(in *inventoryv1.Instance) []stepView {
	state, detail := vocab.State(in.GetState()), in.GetStateDetail()
	cur := -1
	for i, s := range vocab.ProvisionSteps {
		if detail == string(s) || strings.HasPrefix(detail, string(s)+":") {
			cur = i
		}
	}
	out := make([]stepView, len(vocab.ProvisionSteps))
	for i, s := range vocab.ProvisionSteps {
		st := "todo"
		switch {
		case state == vocab.StateRunning:
			st = "done"
		case (state == vocab.StateProvisioning || state == vocab.StateFailed) && cur >= 0 && i < cur:
			st = "done"
		case state == vocab.StateProvisioning && i == cur:
			st = "current"
		case state == vocab.StateFailed && i == cur:
			st = "failed"
		}
		out[i] = stepView{Step: string(s), Status: st}
	}
	return out
}

// fieldCtx is what the field template renders: a field of a form.
type fieldCtx struct {
	Form *form
	F    *formField
}

// doneSteps counts the steps done.
func doneSteps(steps []stepView) int {
	n := 0
	for _, s := range steps {
		if s.Status == "done" {
			n++
		}
	}
	return n
}

// inputID is the id of the input for a field path ("dns.hostnamePattern"
// → "f-dns-hostnamePattern").
func inputID(path string) string {
	return "f-" + strings.NewReplacer(".", "-", "[", "-", "]", "").Replace(path)
}
