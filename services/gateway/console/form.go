package console

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/vocab"
)

// fieldKind is how a form field is entered and sent.
type fieldKind string

// Field kinds.
const (
	kindText     fieldKind = "text"
	kindTextarea fieldKind = "textarea"
	kindSelect   fieldKind = "select"
	kindCheckbox fieldKind = "checkbox"
	kindNumber   fieldKind = "number"
	// kindList is one value per line (or comma-separated): a JSON list.
	kindList fieldKind = "list"
	// kindSecret is write-only: never filled in, sent only when entered.
	kindSecret fieldKind = "secret"
	// kindPassword is a one-line kindSecret: a password or a secret key.
	kindPassword fieldKind = "password"
	// kindTags is key=value per line: a JSON object.
	kindTags fieldKind = "tags"
	// kindDuration is "7d", "12h", "30m" or "90s": a JSON duration.
	kindDuration fieldKind = "duration"
)

// option is one choice of a select.
type option struct{ Value, Label string }

// formField is one input of a form. Path is the field's JSON path in the
// API's resource ("dns.hostnamePattern"), also the input's name, so the
// API's field errors land next to their input.
type formField struct {
	Path, Label, Help string
	Kind              fieldKind
	Options           []option
	Required          bool
	Value             string
	// StoredPath names the field that says a write-only value is stored
	// (its id); Stored is whether it is.
	StoredPath string
	Stored     bool
	// Create fields are set when a record is made only: an edit form
	// neither shows nor sends them (a user's name and first password).
	Create bool
	// Autocomplete is the input's autocomplete hint, when it needs one.
	Autocomplete string
}

// fieldset is a group of fields; Path, when set, is the JSON object they
// belong to (an error naming it is shown at the group).
type fieldset struct {
	Legend, Path, Help string
	// When ("provider=aws") shows the group only while the form's field
	// has that value (the script hides and disables it otherwise).
	When   string
	Fields []*formField
}

// form is a create or edit form of one API resource.
type form struct {
	Title   string
	Action  string
	Submit  string
	Cancel  string
	Version string
	Sets    []*fieldset
	// Actions are a template's setup actions, edited as an ordered list.
	Actions    []*setupActionRow
	HasActions bool
	// Focus is the id of the control that gets the focus on this render.
	Focus string
	// Err is the API's (or the form's own) error, shown at ErrPath's input
	// (and in the summary); Stale says the record changed since it was read.
	Err     *apiError
	ErrPath string
	Stale   bool
	Reload  string
}

// editable is sets without the fields set only at creation (and without
// the groups left empty).
func editable(sets []*fieldset) []*fieldset {
	var out []*fieldset
	for _, set := range sets {
		kept := *set
		kept.Fields = slices.DeleteFunc(slices.Clone(set.Fields), func(fd *formField) bool { return fd.Create })
		if len(kept.Fields) > 0 {
			out = append(out, &kept)
		}
	}
	return out
}

func (f *form) fields() []*formField {
	var out []*formField
	for _, s := range f.Sets {
		out = append(out, s.Fields...)
	}
	return out
}

func (f *form) field(path string) *formField {
	for _, fd := range f.fields() {
		if fd.Path == path {
			return fd
		}
	}
	return nil
}

// errFor is the error message shown beside the input (or group) path.
func (f *form) errFor(path string) string {
	if f.Err == nil || f.ErrPath == "" || f.ErrPath != path {
		return ""
	}
	return f.Err.Message
}

// paths lists every path an error can be shown at.
func (f *form) paths() []string {
	var out []string
	for _, s := range f.Sets {
		if s.Path != "" {
			out = append(out, s.Path)
		}
		for _, fd := range s.Fields {
			out = append(out, fd.Path)
		}
	}
	for i := range f.Actions {
		out = append(out, fmt.Sprintf("setupActions[%d]", i))
		for _, k := range actionFields {
			out = append(out, fmt.Sprintf("setupActions[%d].%s", i, k))
		}
	}
	if f.HasActions {
		out = append(out, "setupActions")
	}
	return out
}

var indexSuffix = regexp.MustCompile(`\[\d+\]$`)

// setErr shows err on the form: at the input its field names, or the
// closest enclosing one ("ssl.sans[2]" at ssl.sans, "tags.env" at tags).
func (f *form) setErr(err *apiError) {
	f.Err, f.ErrPath = err, ""
	f.Stale = err.Reason == reasonVersionMismatch
	known := f.paths()
	for p := err.Field; p != ""; {
		if slices.Contains(known, p) {
			f.ErrPath = p
			break
		}
		if loc := indexSuffix.FindStringIndex(p); loc != nil {
			p = p[:loc[0]]
			continue
		}
		i := strings.LastIndexByte(p, '.')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	if f.ErrPath != "" {
		f.Focus = inputID(f.ErrPath)
	}
}

// fill sets the form's inputs from a record the API answered.
func (f *form) fill(rec proto.Message) error {
	b, err := protojson.Marshal(rec)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if v, ok := m["version"]; ok {
		f.Version = fmt.Sprint(v)
	}
	for _, fd := range f.fields() {
		v, _ := lookup(m, fd.Path)
		if fd.StoredPath != "" {
			s, _ := lookup(m, fd.StoredPath)
			fd.Stored = s != nil && s != "" && s != false
		}
		fd.Value = inputText(fd.Kind, v)
	}
	return nil
}

// lookup finds a dotted path in decoded JSON.
func lookup(m map[string]any, path string) (any, bool) {
	var cur any = m
	for seg := range strings.SplitSeq(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[seg]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// inputText is how a JSON value is entered in an input of kind k.
func inputText(k fieldKind, v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case bool:
		if x {
			return "on"
		}
		return ""
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, "\n")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		lines := make([]string, len(keys))
		for i, k := range keys {
			lines[i] = k + "=" + fmt.Sprint(x[k])
		}
		return strings.Join(lines, "\n")
	case string:
		if k == kindSecret || k == kindPassword {
			return ""
		}
		if k == kindDuration {
			return durationText(x)
		}
		return x
	}
	return fmt.Sprint(v)
}

// durationText writes a JSON duration ("604800s") in the largest whole
// unit: "7d".
func durationText(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return s
	}
	secs := int64(d / time.Second)
	for _, u := range []struct {
		n    int64
		name string
	}{{86400, "d"}, {3600, "h"}, {60, "m"}} {
		if secs%u.n == 0 {
			return strconv.FormatInt(secs/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(secs, 10) + "s"
}

// parseDuration reads "7d", "12h", "30m", "90s" (or any Go duration) as
// a JSON duration ("604800s").
func parseDuration(s string) (string, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseInt(n, 10, 32)
		if err != nil {
			return "", fmt.Errorf("%q is not a duration such as 7d, 12h or 30m", s)
		}
		return strconv.FormatInt(days*86400, 10) + "s", nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a duration such as 7d, 12h or 30m", s)
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s", nil
}

// read takes the inputs from a submitted form.
func (f *form) read(value func(string) string) {
	f.Version = value("version")
	for _, fd := range f.fields() {
		fd.Value = strings.TrimSpace(strings.ReplaceAll(value(fd.Path), "\r\n", "\n"))
		if fd.Kind == kindSecret || fd.Kind == kindPassword || fd.Kind == kindTextarea {
			fd.Value = strings.ReplaceAll(value(fd.Path), "\r\n", "\n")
		}
	}
}

// body is the JSON the API takes for the form's inputs: every field, as
// its kind is sent; an object whose fields are all empty is null (so an
// update clears it, and a setting that applies to another provider or
// strategy is not sent at all); a write-only field left empty is left out
// (an update keeps what is stored). A value the form cannot read is an
// error naming its field.
func (f *form) body() (map[string]any, *apiError) {
	out := map[string]any{}
	for _, fd := range f.fields() {
		v, err := jsonValue(fd)
		if err != nil {
			return nil, &apiError{Status: 400, Reason: "invalid_field", Field: fd.Path, Message: fd.Path + ": " + err.Error()}
		}
		if v == nil {
			continue
		}
		segs := strings.Split(fd.Path, ".")
		obj := out
		for _, seg := range segs[:len(segs)-1] {
			next, ok := obj[seg].(map[string]any)
			if !ok {
				next = map[string]any{}
				obj[seg] = next
			}
			obj = next
		}
		obj[segs[len(segs)-1]] = v
	}
	for k, v := range out {
		if obj, ok := v.(map[string]any); ok && empty(obj) {
			out[k] = nil
		}
	}
	if f.Version != "" {
		out["version"] = f.Version
	}
	return out, nil
}

// jsonValue converts one input to JSON (nil: leave the field out).
func jsonValue(fd *formField) (any, error) {
	s := fd.Value
	switch fd.Kind {
	case kindCheckbox:
		return s != "", nil
	case kindNumber:
		if s == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q is not a whole number", s)
		}
		return n, nil
	case kindList:
		items := []string{}
		for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == ',' }) {
			if p = strings.TrimSpace(p); p != "" {
				items = append(items, p)
			}
		}
		return items, nil
	case kindTags:
		tags := map[string]string{}
		for i, line := range strings.Split(s, "\n") {
			if line = strings.TrimSpace(line); line == "" {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("line %d (%q) is not key=value", i+1, line)
			}
			tags[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		return tags, nil
	case kindSecret, kindPassword:
		if strings.TrimSpace(s) == "" {
			return nil, nil
		}
		return s, nil
	case kindDuration:
		if s == "" {
			return nil, nil
		}
		return parseDuration(s)
	}
	return s, nil
}

// empty reports whether every value in obj is empty.
func empty(obj map[string]any) bool {
	for _, v := range obj {
		switch x := v.(type) {
		case string:
			if x != "" {
				return false
			}
		case bool:
			if x {
				return false
			}
		case int64:
			if x != 0 {
				return false
			}
		case int:
			if x != 0 {
				return false
			}
		case []string:
			if len(x) > 0 {
				return false
			}
		case map[string]string:
			if len(x) > 0 {
				return false
			}
		case map[string]any:
			if !empty(x) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// setupActionRow is one of a template's setup actions in the form.
type setupActionRow struct {
	Index                                              int
	Type                                               string
	Script, Path, Content, Mode, Name, Value, Packages string
}

// actionFields are the inputs of a setup action row, by JSON name.
var actionFields = []string{"type", "script", "path", "content", "mode", "name", "value", "packages"}

func (a *setupActionRow) get(k string) string {
	return map[string]string{"type": a.Type, "script": a.Script, "path": a.Path, "content": a.Content,
		"mode": a.Mode, "name": a.Name, "value": a.Value, "packages": a.Packages}[k]
}

// actionGroup is the inputs of one type of setup action.
type actionGroup struct {
	Type   string
	Fields []*formField
}

// actionInputs are a setup action's inputs by type.
var actionInputs = []struct {
	typ    vocab.SetupAction
	fields []formField
}{
	{vocab.SetupScript, []formField{{Path: "script", Label: "Script", Kind: kindTextarea, Help: "Run with sh in the data disk's root; ${secret:NAME} reads a secret."}}},
	{vocab.SetupFile, []formField{{Path: "path", Label: "Path", Kind: kindText, Help: "Relative to the data disk's root."},
		{Path: "content", Label: "Content", Kind: kindTextarea}, {Path: "mode", Label: "Mode", Kind: kindText, Help: "Octal, e.g. 0644."}}},
	{vocab.SetupEnv, []formField{{Path: "name", Label: "Variable", Kind: kindText}, {Path: "value", Label: "Value", Kind: kindText}}},
	{vocab.SetupPackages, []formField{{Path: "packages", Label: "Packages", Kind: kindText, Help: "Separated by spaces."}}},
}

// Groups are the row's inputs for each type of action; the page shows
// those of the row's type.
func (a *setupActionRow) Groups() []actionGroup {
	out := make([]actionGroup, len(actionInputs))
	for i, g := range actionInputs {
		out[i].Type = string(g.typ)
		for _, fd := range g.fields {
			fd.Value = a.get(fd.Path)
			fd.Path = fmt.Sprintf("setupActions[%d].%s", a.Index, fd.Path)
			out[i].Fields = append(out[i].Fields, &fd)
		}
	}
	return out
}

// readActions takes a template's setup actions from a submitted form.
func readActions(value func(string) string, count int) []*setupActionRow {
	var out []*setupActionRow
	for i := range min(count, 200) {
		v := func(k string) string {
			return strings.ReplaceAll(value(fmt.Sprintf("setupActions[%d].%s", i, k)), "\r\n", "\n")
		}
		out = append(out, &setupActionRow{Type: v("type"), Script: v("script"), Path: strings.TrimSpace(v("path")),
			Content: v("content"), Mode: strings.TrimSpace(v("mode")), Name: strings.TrimSpace(v("name")),
			Value: v("value"), Packages: v("packages")})
	}
	return out
}

// actionsJSON is the setupActions the API takes: each action with only the
// fields its type uses.
func actionsJSON(rows []*setupActionRow) []map[string]any {
	out := []map[string]any{}
	for _, a := range rows {
		m := map[string]any{"type": a.Type}
		switch a.Type {
		case "script":
			m["script"] = a.Script
		case "file":
			m["path"], m["content"] = a.Path, a.Content
			if a.Mode != "" {
				m["mode"] = a.Mode
			}
		case "env":
			m["name"], m["value"] = a.Name, a.Value
		case "packages":
			m["packages"] = strings.Fields(strings.ReplaceAll(a.Packages, ",", " "))
		}
		out = append(out, m)
	}
	return out
}

// reorder applies a setup-action list operation ("add", "up:2",
// "down:0", "remove:1") and returns the index of the row to focus.
func reorder(rows []*setupActionRow, op string) ([]*setupActionRow, int) {
	verb, arg, _ := strings.Cut(op, ":")
	i, _ := strconv.Atoi(arg)
	if verb == "add" {
		return append(rows, &setupActionRow{Type: "script"}), len(rows)
	}
	if i < 0 || i >= len(rows) {
		return rows, -1
	}
	switch verb {
	case "up":
		if i > 0 {
			rows[i-1], rows[i] = rows[i], rows[i-1]
			return rows, i - 1
		}
	case "down":
		if i < len(rows)-1 {
			rows[i+1], rows[i] = rows[i], rows[i+1]
			return rows, i + 1
		}
	case "remove":
		rows = slices.Delete(rows, i, i+1)
		return rows, min(i, len(rows)-1)
	}
	return rows, i
}

// index numbers the rows in order.
func index(rows []*setupActionRow) []*setupActionRow {
	for i, r := range rows {
		r.Index = i
	}
	return rows
}
